"""Callback delivery: a heap of due times, one timer thread, a small pool of POSTing threads.

Request threads only schedule; nothing here raises into them. Every POST has a timeout, and
its outcome (delivered, or why not) is handed back to whoever scheduled it.
"""
from __future__ import annotations

import heapq
import http.client
import itertools
import logging
import queue
import select
import threading
import time
from typing import Callable
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)

_local = threading.local()
_HEADERS = {"Content-Type": "application/json", "User-Agent": "daraja-simulator"}


def post_json(url: str, body: bytes, timeout_s: float) -> tuple[bool, str]:
    """POST ``body`` as JSON; (True, "200") on any 2xx, else (False, status or error name).

    Each delivery thread keeps its own keep-alive connections. Proxy settings and .netrc from
    the environment are ignored: callbacks go straight to the CallBackURL.

    A plain ``http://`` CallBackURL is POSTed with ``http.client`` on a connection this thread
    keeps per host and port: ``requests`` cost the simulator about three quarters of its CPU
    per top-up (make bench, end to end). Errors are named as ``requests`` names them
    (``ConnectionError``, ``ConnectTimeout``, ``ReadTimeout``), and a POST is never retried:
    a kept connection the server closed while it was idle is found closed before it is used,
    as urllib3 does, and replaced. Anything else (https, credentials or non-ASCII in the URL)
    goes through a ``requests`` session, as every callback did before.
    """
    target = _plain_http_target(url)
    if target is None:
        return _post_with_requests(url, body, timeout_s)
    host, port, path = target
    connections = getattr(_local, "connections", None)
    if connections is None:
        connections = _local.connections = {}
    key = (host, port, timeout_s)
    conn = connections.pop(key, None)
    if conn is not None and _dropped(conn):
        conn.close()
        conn = None
    if conn is None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            conn.connect()
        except TimeoutError:
            conn.close()
            return False, "ConnectTimeout"
        except Exception as exc:  # noqa: BLE001 - refused, unreachable, unresolvable
            conn.close()
            return False, "ConnectionError" if isinstance(exc, OSError) else type(exc).__name__
    try:
        conn.request("POST", path, body=body, headers=_HEADERS)
        response = conn.getresponse()
        response.read()  # the whole answer, so that the connection can be used again
    except TimeoutError:
        conn.close()
        return False, "ReadTimeout"
    except Exception as exc:  # noqa: BLE001 - a delivery failure is recorded, never raised
        conn.close()
        return False, ("ConnectionError" if isinstance(exc, (OSError, http.client.HTTPException))
                       else type(exc).__name__)
    if response.will_close:
        conn.close()
    else:
        connections[key] = conn
    return 200 <= response.status < 300, str(response.status)


def _plain_http_target(url: str) -> tuple[str, int, str] | None:
    """(host, port, path and query) of a plain ``http://`` URL that ``http.client`` sends as
    ``requests`` would; None for anything else."""
    if not url.startswith("http://") or not url.isascii() or "#" in url or "%" in url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError:
        return None
    host = parts.hostname
    if not host or parts.username is not None or parts.password is not None:
        return None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return host, port, path


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """A kept connection that is readable while no answer is due was closed by the server
    (or is out of step): not to be used again (urllib3's ``is_connection_dropped``)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        if not hasattr(select, "poll"):   # Windows
            return bool(select.select([sock], [], [], 0)[0])
        poller = select.poll()   # not select(): a descriptor above FD_SETSIZE is fine
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _post_with_requests(url: str, body: bytes, timeout_s: float) -> tuple[bool, str]:
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False
        session.headers.update(_HEADERS)
        _local.session = session
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
            self._outstanding += 1
            if (self._running and due <= self._clock()
                    and (not self._heap or self._heap[0][0] > due)):
                # due already, nothing in the heap due before it: straight to a worker, without
                # waking the timer thread for it (callback_delay_s 0: one thread hand-off less)
                self._ready.put((self._generation, fn))
                return
            entry = (due, next(self._seq), self._generation, fn)
            heapq.heappush(self._heap, entry)
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
