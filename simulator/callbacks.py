"""Callback delivery: a heap of due times, one timer thread, a small pool of POSTing threads.

Request threads only schedule; nothing here raises into them. Every POST has a timeout, and
its outcome (delivered, or why not) is handed back to whoever scheduled it.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from typing import Callable

import requests

log = logging.getLogger(__name__)

_sessions = threading.local()


def post_json(url: str, body: bytes, timeout_s: float) -> tuple[bool, str]:
    """POST ``body`` as JSON; (True, "200") on any 2xx, else (False, status or error name).

    Each delivery thread keeps its own keep-alive session. Proxy settings and .netrc from the
    environment are ignored: callbacks go straight to the CallBackURL.
    """
    session = getattr(_sessions, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False
        session.headers.update({"Content-Type": "application/json",
                                "User-Agent": "daraja-simulator"})
        _sessions.session = session
    try:
        response = session.post(url, data=body, timeout=timeout_s)
        response.content  # read the answer so the connection can be reused
    except requests.RequestException as exc:
        return False, type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - a delivery failure is recorded, never raised
        return False, type(exc).__name__
    return 200 <= response.status_code < 300, str(response.status_code)


class Scheduler:
    """Runs functions at monotonic due times on ``workers`` daemon threads."""

    def __init__(self, workers: int = 16, name: str = "sim-callbacks",
                 clock: Callable[[], float] = time.monotonic):
        self._workers = max(1, workers)
        self._name = name
        self._clock = clock
        self._heap: list = []
        self._cond = threading.Condition()
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._seq = itertools.count()
        self._generation = 0
        self._running = False
        self._outstanding = 0  # scheduled and not finished (or dropped)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._threads = [threading.Thread(target=self._timer, name=f"{self._name}-timer",
                                          daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"{self._name}-{i}",
                                           daemon=True) for i in range(self._workers)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop taking work: due items not started are dropped; POSTs in flight finish on
        their own (bounded by their timeout) in daemon threads."""
        with self._cond:
            if not self._running:
                return
            self._running = False
            self._outstanding -= len(self._heap)
            self._heap.clear()
            self._generation += 1
            self._cond.notify_all()
        for _ in range(self._workers):
            self._ready.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def call_at(self, due: float, fn: Callable[[], None]) -> None:
        with self._cond:
            entry = (due, next(self._seq), self._generation, fn)
            heapq.heappush(self._heap, entry)
            self._outstanding += 1
            if self._heap[0] is entry:
                self._cond.notify()

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        self.call_at(self._clock() + delay_s, fn)

    def clear(self) -> None:
        """Forget everything scheduled and not yet started."""
        with self._cond:
            self._outstanding -= len(self._heap)
            self._heap.clear()
            self._generation += 1

    def pending(self) -> int:
        """Items scheduled, due or running."""
        with self._cond:
            return self._outstanding

    def _timer(self) -> None:
        while True:
            with self._cond:
                while self._running:
                    now = self._clock()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                if not self._running:
                    return
                now = self._clock()
                while self._heap and self._heap[0][0] <= now:
                    _, _, generation, fn = heapq.heappop(self._heap)
                    self._ready.put((generation, fn))

    def _work(self) -> None:
        while True:
            item = self._ready.get()
            if item is None:
                return
            generation, fn = item
            try:
                with self._cond:
                    current = generation == self._generation
                if current:
                    fn()
            except Exception:  # noqa: BLE001 - a worker thread must survive anything
                log.exception("simulator: a scheduled callback task failed")
            finally:
                with self._cond:
                    self._outstanding -= 1
