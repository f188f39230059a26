"""The one broker module: built from REDIS_URL, swapped for a StubBroker in unit tests.

Every broker gets the same middleware, so what a test sees is what production runs. It is a
:class:`workers.doorbell.DoorbellBroker`: every enqueue (API, workers, scheduler) rings the
queue's doorbell, and idle consumers wait on it instead of polling.
"""
from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Retries, TimeLimit

from workers.doorbell import DoorbellBroker
from workers.middleware import DatabaseConnections


def dramatiq_middleware():
    """Dramatiq's own middleware that our actors use: retries with backoff (``max_retries``,
    ``min_backoff``, ``retry_when``…) and ``time_limit``. Its other defaults (AgeLimit,
    ShutdownNotifications, Callbacks, Pipelines) serve options no actor of ours sets, and
    each still ran its hooks on every message (~17 µs a message, measured in one process).
    An actor given one of their options is refused at declaration, so none is used unseen."""
    return [TimeLimit(), Retries()]


def our_middleware():
    return [DatabaseConnections()]


def build(redis_url: str) -> RedisBroker:
    # a lost Redis must not hang a request or a worker thread forever. The client is built
    # here: RedisBroker(url=...) ignores connection arguments given next to a URL (redis-py's
    # default 5 s socket timeout applied instead). Consumers block on their doorbell for at
    # most half the socket timeout.
    client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5,
                                  health_check_interval=30)
    broker = DoorbellBroker(client=client, middleware=dramatiq_middleware())
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
