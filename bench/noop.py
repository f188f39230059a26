"""The baseline for the workers: Dramatiq's own throughput for an actor that does nothing,
on the same Redis, with the same processes, threads and poll interval.

``dramatiq bench.noop`` consumes it; the harness enqueues the messages (REDIS_URL).
"""
import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

QUEUE = "bench_noop"

dramatiq.set_broker(RedisBroker(url=os.environ["REDIS_URL"]))


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(n: int) -> None:
    pass
