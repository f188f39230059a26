"""Doorbells on a real redis-server: workers that poll only every 10 s still run a new message,
a retry and a delayed message at once, and a bell nobody answers stays a few entries long.

Two workers (two brokers, as two processes would have) consume the same queues, so every
bell has more than one consumer waiting on it.
"""
from __future__ import annotations

import threading
import uuid

import dramatiq
import pytest
import redis

from tests.waiting import wait_until
from workers.doorbell import RINGS_KEPT, DoorbellBroker, bell_key

POLL_MS = 10_000
# well under the poll interval, far above what a ring takes
SOON_S = 5


def _broker(url: str, namespace: str) -> DoorbellBroker:
    # a socket timeout well above the poll interval, so that the consumers block for all of it
    client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
    return DoorbellBroker(client=client, namespace=namespace)


@pytest.fixture(scope="module")
def fleet(redis_server):
    namespace = "bell_" + uuid.uuid4().hex[:8]
    ran, retried = [], []

    def run(n):
        ran.append(n)

    def retry_once(n):
        retried.append(n)
        if retried.count(n) == 1:
            raise dramatiq.Retry(delay=200)

    brokers = [_broker(redis_server.url, namespace) for _ in range(2)]
    actors = {}
    for broker in brokers:
        actors["run"] = dramatiq.actor(run, broker=broker, queue_name="work")
        actors["retry_once"] = dramatiq.actor(retry_once, broker=broker, queue_name="work",
                                              max_retries=3)
    workers = [dramatiq.Worker(broker, worker_timeout=POLL_MS, worker_threads=2)
               for broker in brokers]
    for worker in workers:
        worker.start()
    wait_until(lambda: all(len(w.consumers) == 2 for w in workers), timeout=10,
               message="the consumers to start")
    yield {"namespace": namespace, "ran": ran, "retried": retried, "actors": actors,
           "client": brokers[0].client, "url": redis_server.url}
    stopping = [threading.Thread(target=w.stop) for w in workers]
    for thread in stopping:
        thread.start()
    for thread in stopping:   # idle threads notice the stop within one poll interval
        thread.join(timeout=POLL_MS / 1000 * 3)


def test_a_worker_polling_every_10_s_runs_a_new_message_at_once(fleet):
    fleet["actors"]["run"].send("new")
    wait_until(lambda: "new" in fleet["ran"], timeout=SOON_S, message="the new message")


def test_a_burst_is_shared_out_and_every_message_runs(fleet):
    for n in range(50):
        fleet["actors"]["run"].send(f"burst-{n}")
    wait_until(lambda: all(f"burst-{n}" in fleet["ran"] for n in range(50)), timeout=SOON_S * 2,
               message="the burst")


def test_a_message_retried_after_200_ms_runs_again_long_before_the_next_poll(fleet):
    fleet["actors"]["retry_once"].send("retry")
    wait_until(lambda: fleet["retried"].count("retry") == 2, timeout=SOON_S,
               message="the retry")


def test_a_message_sent_with_a_delay_runs_when_due_not_at_the_next_poll(fleet):
    fleet["actors"]["run"].send_with_options(args=("later",), delay=300)
    wait_until(lambda: "later" in fleet["ran"], timeout=SOON_S, message="the delayed message")


def test_a_bell_nobody_answers_stays_a_few_rings_long(fleet):
    producer = _broker(fleet["url"], fleet["namespace"])
    producer.declare_queue("unconsumed")
    for n in range(RINGS_KEPT * 10):
        producer.enqueue(dramatiq.Message(queue_name="unconsumed", actor_name="run",
                                          args=(n,), kwargs={}, options={}))
    client = fleet["client"]
    assert client.llen(f"{fleet['namespace']}:unconsumed") == RINGS_KEPT * 10
    assert client.llen(bell_key(fleet["namespace"], "unconsumed")) == RINGS_KEPT
    for queue in ("work", "work.DQ"):
        assert client.llen(bell_key(fleet["namespace"], queue)) <= RINGS_KEPT
