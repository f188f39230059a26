"""The one broker module: built from REDIS_URL, swapped for a StubBroker in unit tests.

Every broker gets the same middleware, so what a test sees is what production runs.

Our Redis broker differs from Dramatiq's in how its consumers poll, nothing else (the same
``dispatch.lua`` for every fetch, ack and enqueue; acks still after processing). Dramatiq's
consumers do not block: each queue of each worker process has a consumer that polls Redis,
and each poll is one ``EVALSHA`` costing its process ~0.13 ms of CPU in a tight loop and
~0.4 ms as an idle thread wakes for it. Measured on 2 cores with ``dramatiq_worker_timeout``
= 100 ms: 8 consumers (4 queues, each with its delay queue) polled ~106 times a second per
idle process, 45–60 ms of CPU a second; under 40 messages/s on each of 3 queues, 4.4
``EVALSHA`` per message, of which one ack and ~3.4 empty fetches.
"""
from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import dq_name

from workers.middleware import DatabaseConnections

# A delay queue's consumer only moves messages whose time has come to their queue, and
# Dramatiq checks their times once per poll, so polling it as often as a queue whose
# messages someone waits on buys nothing: a delayed message (a retry, a query 60 s on) leaves
# at most this late, which is Dramatiq's own default poll interval. Idle CPU of a worker
# process, 4 queues: 55–60 → 31–38 ms a second.
DELAY_QUEUE_POLL_MS = 1000

# After an empty fetch Dramatiq polls again in 5–10 ms, then 10–20, 20–40… up to the worker
# timeout, and starts over after every message: at tens of messages a second most fetches
# come back empty. Starting one step later (10–20 ms) cut the empty fetches per message
# 3.4 → 2.2 and a worker process's CPU at 40 messages/s on each of 3 queues by 15–20%; the
# pick-up delay of a message on a quiet queue went p50 7.5 → 12.8 ms, p90 27 → 32 ms,
# still well inside the ~100 ms that `dramatiq_worker_timeout` = 100 is set for.
FIRST_BACKOFF_STEP = 1


class _PollingConsumer(_RedisConsumer):
    def __init__(self, broker, queue_name, prefetch, timeout):
        if dq_name(queue_name) == queue_name:
            timeout = max(timeout, DELAY_QUEUE_POLL_MS)
        super().__init__(broker, queue_name, prefetch, timeout)

    def __next__(self):
        # Only when the coming fetch can come back empty: with as many messages outstanding
        # as it may prefetch, the consumer waits for a worker thread, and that short wait
        # (Dramatiq's first step) keeps a saturated queue's threads fed.
        if (not self.message_cache and self.misses < FIRST_BACKOFF_STEP
                and self.outstanding_message_count < self.prefetch):
            self.misses = FIRST_BACKOFF_STEP
        return super().__next__()


class GatewayRedisBroker(RedisBroker):
    @property
    def consumer_class(self):
        return _PollingConsumer


def our_middleware():
    return [DatabaseConnections()]


def build(redis_url: str) -> RedisBroker:
    broker = GatewayRedisBroker(
        url=redis_url,
        # a lost Redis must not hang a request or a worker thread forever
        socket_timeout=10, socket_connect_timeout=5, health_check_interval=30,
    )
    for middleware in our_middleware():
        broker.add_middleware(middleware)
    return broker


def install(broker: dramatiq.Broker) -> dramatiq.Broker:
    """Make ``broker`` the one every actor sends to and is consumed from."""
    previous = dramatiq.get_broker()
    have = {type(m) for m in broker.middleware}
    for middleware in our_middleware():
        if type(middleware) not in have:
            broker.add_middleware(middleware)
    for actor in list(previous.actors.values()):
        actor.broker = broker
        broker.declare_actor(actor)
    dramatiq.set_broker(broker)
    return broker
