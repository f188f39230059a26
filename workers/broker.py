"""The one broker module: Dramatiq's ``RedisBroker`` as shipped, built from REDIS_URL, and
swapped for a StubBroker in unit tests. Every broker gets the same middleware (:func:`equip`,
which the start-up calls on the broker it installs, built or given), so what a test sees is
what production runs.

How soon an idle worker picks up a new message is Dramatiq's own ``worker_timeout``: a
consumer that finds its queue empty polls again after a growing backoff of at most that
long. ``dramatiq workers`` reads it, in milliseconds, from the environment variable
``dramatiq_worker_timeout`` when it starts (Dramatiq's default is 1000). We run 200: a new
message waits at most 0.2 s for an idle worker. Lower picks up sooner but polls Redis more
often while idle (one fetch script per poll, for each queue and delay queue of each worker
process); higher polls less and leaves messages waiting longer. It also bounds how long an
idle worker takes to notice a stop. ``make run``, the Docker compose file, the integration
tests and the benchmark all set it.
"""
from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Retries, TimeLimit

from workers import observability
from workers.middleware import DatabaseConnections


def dramatiq_middleware():
    """Dramatiq's own middleware that our actors use: retries with backoff (``max_retries``,
    ``min_backoff``, ``retry_when``…) and ``time_limit``. Its other defaults (AgeLimit,
    ShutdownNotifications, Callbacks, Pipelines) serve options no actor of ours sets; an
    actor given one of their options is refused at declaration, so none is used unseen."""
    return [TimeLimit(), Retries()]


def our_middleware():
    """A message's database connection given back; its log context, metrics and, when it
    dies, why (:mod:`workers.observability`)."""
    return [DatabaseConnections(), *observability.middleware()]


def build(redis_url: str) -> RedisBroker:
    # A lost Redis must not hang a request or a worker thread forever. The client is built
    # here: RedisBroker(url=...) builds its connection pool from the URL alone and ignores
    # connection arguments given next to it.
    client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5,
                                  health_check_interval=30)
    return equip(RedisBroker(client=client, middleware=dramatiq_middleware()))


def equip(broker: dramatiq.Broker) -> dramatiq.Broker:
    """Add our middleware that ``broker`` lacks (safe to call again on the same broker)."""
    have = {type(m) for m in broker.middleware}
    for middleware in our_middleware():
        if type(middleware) not in have:
            broker.add_middleware(middleware)
    return broker
