"""Doorbells: Dramatiq's Redis consumers wait for a ring instead of polling every 100 ms.

Stock Dramatiq consumers poll: after an empty fetch, ``_RedisConsumer.__next__`` sleeps a
backoff of up to ``worker_timeout`` and fetches again (one ``EVALSHA`` each, ~0.4 ms of CPU
when a sleeping thread wakes for it). Here every enqueue also rings the queue's doorbell, a
short Redis list ``<namespace>-bells:<queue>`` (outside Dramatiq's ``<namespace>:`` keys, which
``telemetry.queues`` reads as queues): one ``LPUSH`` and one ``LTRIM`` in the same
round trip as the enqueue. A consumer with nothing fetched waits on its bell with ``BLPOP``
instead of sleeping, so a new message is fetched as soon as it is sent, and the poll interval
(``dramatiq_worker_timeout``) only bounds how long an idle consumer waits between fetches.

A ring is only a hint. The fetch stays the source of truth: a lost ring delays the next fetch
to the poll interval (what stock Dramatiq does), an extra ring costs one empty fetch.
``app.enqueue`` pipelines Dramatiq's script itself and adds the batch's rings to the same
pipeline (:meth:`DoorbellBroker.add_ring`). Other messages that do not go through
``do_enqueue`` are rung when their ``after_enqueue`` hook runs: one round trip per queue for
all the messages whose ``before_enqueue`` came first, a ring each. What the wait also minds,
because a
``ConsumerThread`` only acts between two calls of ``__next__``:

- a delayed message held by the consumer thread is moved to its queue on the first loop after
  its eta, so the wait ends at the earliest eta of the delayed messages it handed out;
- a consumer with as many messages outstanding as its prefetch cannot fetch, so it waits for
  an ack or a nack in this process (a ``threading.Event``), not for a ring it could not use.
  A busy one also waits for acks until a quarter of its prefetch is free, then fetches that
  many at once (:func:`fetch_batch`): stock Dramatiq fetched after every ack, one message at
  a time.

A fetch that brought fewer messages than asked for emptied the queue: the consumer does not
fetch again before a ring (or its poll interval), which saves stock Dramatiq's empty fetch
after every message.

``BLPOP`` blocks a connection of the broker's pool, so waits stay well below the pool's
socket timeout; Redis times out blocked clients on its cron tick (``hz`` 10: 100 ms), so a
wait that must end on time blocks until a tick before its end and sleeps the rest.
"""
from __future__ import annotations

import heapq
import logging
import threading
import time

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

log = logging.getLogger(__name__)

#: Rings kept on a bell nobody is waiting on: enough to wake every consumer of a queue.
RINGS_KEPT = 16
#: How late Redis may time out a blocked ``BLPOP`` (one tick of its default ``hz`` 10).
BLOCK_RESOLUTION_S = 0.1
#: The longest wait when the connections have no socket timeout.
LONGEST_WAIT_S = 5.0
#: How a consumer waits when its bell cannot be read: stock Dramatiq's 100 ms poll.
FALLBACK_POLL_S = 0.1


#: The most a busy consumer waits for before it fetches (see :func:`fetch_batch`).
FETCH_BATCH_MAX = 16


def fetch_batch(prefetch: int) -> int:
    """How much room a consumer waits for before it fetches again: a quarter of its prefetch.

    With Dramatiq's prefetch of twice the worker threads, a consumer fetches once a quarter of
    it is free, while the other messages it fetched (at least half the threads' worth beyond
    those running) keep every thread busy; stock Dramatiq fetches on every ack, a message at a
    time when the queue is busy (0.77 fetches per credit measured, each a round trip and a
    dispatch script). A thread idle for want of a message means that the consumer holds no
    more than the running ones, so it has room enough to fetch. Capped for the delay queues,
    whose prefetch is a thousand per thread."""
    return max(1, min(prefetch // 4, FETCH_BATCH_MAX))


def bell_key(namespace: str, queue_name: str) -> str:
    return f"{namespace}-bells:{queue_name}"


def add_enqueue(broker: RedisBroker, pipe, queue_name: str, *args) -> None:
    """Dramatiq's enqueue of one message added to a pipeline: the ``EVALSHA`` of its
    ``dispatch`` script with the arguments ``RedisBroker.do_enqueue`` gives it (``args``: the
    message's redis id and its encoded body). The one copy of those arguments here, for this
    broker and for ``app.enqueue``'s batches."""
    pipe.evalsha(broker.scripts["dispatch"].sha, 1, broker.namespace, "enqueue",
                 current_millis(), queue_name, broker.broker_id, broker.heartbeat_timeout,
                 broker.dead_message_ttl, broker._should_do_maintenance("enqueue"),
                 broker._max_unpack_size(), *args)


class DoorbellBroker(RedisBroker):
    """A :class:`RedisBroker` whose enqueues ring the queue's doorbell and whose consumers
    wait on it. Same keys, same scripts, same messages: stock brokers and workers can share
    its Redis (they just do not ring or listen)."""

    def __init__(self, *, rings_kept: int = RINGS_KEPT, **kwargs):
        super().__init__(**kwargs)
        self.rings_kept = rings_kept
        self._local = threading.local()
        socket_timeout = self.client.connection_pool.connection_kwargs.get("socket_timeout")
        # half the socket timeout: a blocked BLPOP never trips it
        self.longest_wait_s = socket_timeout / 2 if socket_timeout else LONGEST_WAIT_S

    @property
    def consumer_class(self):
        return DoorbellConsumer

    def bell(self, queue_name: str) -> str:
        return bell_key(self.namespace, queue_name)

    # --- ringing --------------------------------------------------------------------------
    def _unrung(self) -> dict[str, int]:
        """Per queue, the enqueues this thread announced (``before_enqueue``) and has not rung
        for yet."""
        unrung = getattr(self._local, "queues", None)
        if unrung is None:
            unrung = self._local.queues = {}
        return unrung

    def emit_before(self, signal, *args, **kwargs):
        if signal == "enqueue":
            unrung = self._unrung()
            queue_name = args[0].queue_name
            unrung[queue_name] = unrung.get(queue_name, 0) + 1
        super().emit_before(signal, *args, **kwargs)

    def emit_after(self, signal, *args, **kwargs):
        if signal == "enqueue":
            times = self._unrung().pop(args[0].queue_name, 0)
            if times:   # sent without do_enqueue: ring for all of them at once
                self.ring(args[0].queue_name, times)
        super().emit_after(signal, *args, **kwargs)

    def do_enqueue(self, queue_name, *args):
        """Dramatiq's enqueue (``dispatch.lua``), then a ring, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        add_enqueue(self, pipe, queue_name, *args)
        self.add_ring(pipe, queue_name)
        enqueued, *rang = pipe.execute(raise_on_error=False)
        if isinstance(enqueued, redis.exceptions.NoScriptError):
            # a Redis that lost its scripts: enqueue as Dramatiq does (it loads the script),
            # ring again once the message is there
            enqueued = self._dispatch("enqueue")(queue_name, *args)
            self.ring(queue_name)
        elif isinstance(enqueued, Exception):
            raise enqueued
        elif any(isinstance(answer, Exception) for answer in rang):
            log.warning("could not ring the doorbell of %s: %s", queue_name,
                        next(a for a in rang if isinstance(a, Exception)))
        unrung = self._unrung()
        if unrung.get(queue_name, 0) > 1:
            unrung[queue_name] -= 1
        else:
            unrung.pop(queue_name, None)
        return enqueued

    def ring(self, queue_name: str, times: int = 1) -> None:
        """Wake ``times`` consumers of ``queue_name`` (a hint: failures are logged, never
        raised)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            self.add_ring(pipe, queue_name, times)
            pipe.execute()
        except redis.RedisError as e:
            log.warning("could not ring the doorbell of %s: %s", queue_name, e)

    def add_ring(self, pipe, queue_name: str, times: int = 1) -> None:
        """Add ``times`` rings of ``queue_name``'s bell to a pipeline (after the enqueues they
        announce)."""
        bell = self.bell(queue_name)
        pipe.lpush(bell, *[1] * min(times, self.rings_kept))
        pipe.ltrim(bell, 0, self.rings_kept - 1)


class DoorbellConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, waiting on its queue's doorbell instead of sleeping."""

    def __init__(self, broker, queue_name, prefetch, timeout):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.bell = broker.bell(queue_name)
        self.slot_freed = threading.Event()
        self._etas: list[tuple[float, str]] = []   # heap of (eta ms, message id), lazily pruned
        self._delayed: dict[str, float] = {}       # the delayed messages still outstanding
        self._drained = False   # the last fetch emptied the queue: wait for a ring to fetch
        self.fetch_at_least = fetch_batch(prefetch)

    # --- messages going out and coming back -------------------------------------------------
    def ack(self, message):
        try:
            super().ack(message)
        finally:
            self._settled(message)

    def nack(self, message):
        try:
            super().nack(message)
        finally:
            self._settled(message)

    def _settled(self, message) -> None:
        self._delayed.pop(message.message_id, None)
        self.slot_freed.set()

    def requeue(self, messages):
        messages = list(messages)
        super().requeue(messages)
        if messages:
            self.broker.ring(self.queue_name)   # another worker may take them now

    def _handed_out(self, message: Message) -> None:
        if "eta" not in message.options or message.options["eta"] is None:
            return
        eta = message.options["eta"]
        # the consumer thread treats a malformed eta as due now
        eta = eta if isinstance(eta, (int, float)) else current_millis()
        self._delayed[message.message_id] = eta
        heapq.heappush(self._etas, (eta, message.message_id))

    def _next_eta(self) -> float | None:
        while self._etas:
            eta, message_id = self._etas[0]
            if self._delayed.get(message_id) == eta:
                return eta
            heapq.heappop(self._etas)
        return None

    # --- the loop ---------------------------------------------------------------------------
    def __next__(self):
        """Stock ``_RedisConsumer.__next__``, with :meth:`_wait` instead of its sleep."""
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:
                        self.logger.warning("Found 'None' message in message cache for queue "
                                            "%r (dramatiq#266).", self.queue_name)
                        continue
                    self.misses = 0
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    self._handed_out(message)
                    return MessageProxy(message)

                # cleared before counting: an ack from here on ends the wait below at once
                self.slot_freed.clear()
                room = self.prefetch - self.outstanding_message_count
                can_fetch = room >= self.fetch_at_least
                if can_fetch and not self._drained:
                    self.message_cache = self.broker.do_fetch(self.queue_name, room)
                    self._drained = len(self.message_cache) < room
                    if self.message_cache:
                        continue
                self._wait(can_fetch=can_fetch)
                return None
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None

    def _wait(self, *, can_fetch: bool) -> None:
        """Until a ring (or, with no room to fetch, an ack), the next eta or the poll interval."""
        wait_s = min(self.timeout / 1000, self.broker.longest_wait_s)
        eta = self._next_eta()
        on_time = eta is not None and (eta - current_millis()) / 1000 < wait_s
        if on_time:
            wait_s = max(0.0, (eta - current_millis()) / 1000) + 0.001
        if not can_fetch:
            self.slot_freed.wait(wait_s)
            return
        self._drained = False   # whatever ends this wait, the next call fetches
        block_s = wait_s - BLOCK_RESOLUTION_S if on_time else wait_s
        if block_s < 0.01:   # too short to block on: BLPOP's 0 means "for ever"
            time.sleep(wait_s)
            return
        started = time.monotonic()
        try:
            rang = self.broker.client.blpop([self.bell], timeout=block_s)
        except redis.ConnectionError:
            raise
        except redis.RedisError as e:
            log.warning("could not wait on the doorbell of %s: %s", self.queue_name, e)
            time.sleep(min(wait_s, FALLBACK_POLL_S))
            return
        if not rang and on_time:
            time.sleep(max(0.0, wait_s - (time.monotonic() - started)))
