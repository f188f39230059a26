"""The API's enqueues after the answer (``app.enqueue.BatchingSender``) against a real
Redis: a process that ends sends what it had gathered, instead of leaving it to the sweep."""
from __future__ import annotations

import subprocess
import sys

EXITING_API = """
import sys
import dramatiq
from dramatiq.brokers.redis import RedisBroker
from app.enqueue import BatchingSender
broker = RedisBroker(url=sys.argv[1])
actor = dramatiq.actor(lambda seq: None, actor_name="apply_callback", queue_name="callbacks",
                       broker=broker)
sender = BatchingSender(linger_s=60)   # the thread would still be waiting at exit
for seq in range(3):
    sender.submit(actor, seq)
sys.exit(0)
"""


def test_an_api_process_that_exits_sends_what_it_had_not_sent_yet(redis_server):
    import redis as redis_lib
    client = redis_lib.Redis.from_url(redis_server.url)
    client.flushdb()
    subprocess.run([sys.executable, "-c", EXITING_API, redis_server.url], check=True,
                   timeout=60)
    assert client.llen("dramatiq:callbacks") == 3
