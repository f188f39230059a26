"""Enqueueing after the commit. A lost enqueue is not a lost top-up or callback: the row is
committed first, and the scheduler's sweeps re-drive what was never picked up."""
from __future__ import annotations

import atexit
import logging
import os
import threading
from uuid import uuid4

from dramatiq.brokers.redis import RedisBroker

from workers.doorbell import DoorbellBroker, add_enqueue

log = logging.getLogger(__name__)


def after_commit(actor, *args, **context) -> bool:
    try:
        actor.send(*args)
        return True
    except Exception as exc:  # Redis down: the sweeper will find the row
        _lost(actor, exc, context)
        return False


def _lost(actor, exc: BaseException, context: dict) -> None:
    log.warning("enqueue failed; the scheduler will retry",
                extra={"actor": actor.actor_name, "error": type(exc).__name__, **context})


class BatchingSender:
    """Messages sent after the answer, several to one Redis round trip, by one thread.

    The callback acknowledgement's hot path (make bench, "Callback acknowledgement"): one
    ``actor.send`` per request cost the API's request thread as much CPU as storing the
    callback. ``POST /v1/topups`` sends its push here too, so that under load the pushes and
    the callbacks' messages share round trips (make bench, "End to end"). :meth:`submit`
    only appends to a list; a thread of this process sends what gathered in one pipeline of
    Dramatiq's own ``dispatch`` script, the command each send
    would have run, with the same middleware hooks around it. What it cannot send is logged
    and left to the sweep, as before. At exit (a gunicorn worker's graceful stop) whatever
    is still waiting is sent before the process ends, so no callback waits for the sweep;
    what is submitted after that is sent at once. A thread that died is started again by
    the next submit (what it was sending is the sweep's).

    Only a :class:`RedisBroker` is batched: any other (the tests' StubBroker) is sent to at
    once, in the caller's thread, as :func:`after_commit` does.
    """

    def __init__(self, linger_s: float = 0.005, max_batch: int = 500):
        self.linger_s = linger_s
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: list[tuple] = []
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._closing = False

    def submit(self, actor, *args, **context) -> None:
        if isinstance(actor.broker, RedisBroker):
            with self._lock:
                if self._pid != os.getpid():   # first use, or a child forked from the first user
                    self._pid, self._pending, self._closing = os.getpid(), [], False
                    self._thread = None
                    atexit.register(self.close)
                if not self._closing:
                    if self._thread is None or not self._thread.is_alive():
                        self._thread = threading.Thread(target=self._run, name="enqueue",
                                                        daemon=True)
                        self._thread.start()
                    self._pending.append((actor, args, context))
                    if len(self._pending) == 1:
                        self._wake.notify()
                    return
        after_commit(actor, *args, **context)  # another broker, or this process is ending

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:
                    return
                if self.linger_s and not self._closing:
                    # the requests answered meanwhile join in (submit notifies only an empty
                    # list: only close() cuts this short)
                    self._wake.wait(self.linger_s)
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
            self._send(batch)

    def _send(self, batch: list[tuple]) -> None:
        by_broker: dict[int, list[tuple]] = {}
        for item in batch:
            by_broker.setdefault(id(item[0].broker), []).append(item)
        for messages in by_broker.values():
            try:
                send_pipelined(messages)
            except Exception as exc:  # Redis down: the sweeper will find the rows
                for actor, _, context in messages:
                    _lost(actor, exc, context)

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is waiting, then stop the thread (at exit; safe to call again)."""
        with self._lock:
            if self._pid != os.getpid():
                return
            self._closing = True
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        with self._lock:
            rest, self._pending = self._pending, []
        if rest:
            self._send(rest)


def send_pipelined(batch: list[tuple]) -> None:
    """``actor.send(*args)`` for every ``(actor, args, context)`` of ``batch`` (all on one
    RedisBroker), in one round trip: what ``RedisBroker.enqueue`` does for one message,
    EVALSHA of its ``dispatch`` script with the same arguments, for all of them in one
    pipeline. A message the pipeline could not send (the script flushed from Redis) goes by
    ``broker.enqueue`` on its own, which loads the script again.

    On a :class:`~workers.doorbell.DoorbellBroker` the rings of the batch's queues (one per
    message, as ``do_enqueue`` rings) go in the same pipeline, after the messages, instead
    of a round trip of their own from the broker's ``after_enqueue`` hook: the broker's own
    hooks, which only count the rings owed, are passed over for Dramatiq's."""
    broker = batch[0][0].broker
    doorbell = isinstance(broker, DoorbellBroker)
    hooks = super(DoorbellBroker, broker) if doorbell else broker
    pipe = broker.client.pipeline(transaction=False)
    messages = []
    rings: dict[str, int] = {}
    for actor, args, _ in batch:
        message = actor.message(*args).copy(options={"redis_message_id": str(uuid4())})
        hooks.emit_before("enqueue", message, None)
        add_enqueue(broker, pipe, message.queue_name, message.options["redis_message_id"],
                    message.encode())
        messages.append(message)
        rings[message.queue_name] = rings.get(message.queue_name, 0) + 1
    if doorbell:
        for queue_name, times in rings.items():
            broker.add_ring(pipe, queue_name, times)
    results = pipe.execute(raise_on_error=False)
    rang = results[len(messages):]
    if any(isinstance(answer, Exception) for answer in rang):
        log.warning("could not ring the doorbells of %s: %s", ", ".join(rings),
                    next(a for a in rang if isinstance(a, Exception)))
    for (actor, _, context), message, result in zip(batch, messages, results):
        if isinstance(result, Exception):
            try:
                broker.enqueue(message)
            except Exception as exc:
                _lost(actor, exc, context)
            continue
        hooks.emit_after("enqueue", message, None)


sender = BatchingSender()
