"""The doorbell broker's ack and batched fetch (workers/doorbell.py) on a real redis-server: a worker
drains a burst with Dramatiq's bookkeeping left clean, and an ack or a fetch still lands on a
Redis that forgot the dispatch script or closed the connection under it.
"""
from __future__ import annotations

import uuid

import dramatiq
import pytest
import redis

from tests.waiting import wait_until
from workers.doorbell import DoorbellBroker


@pytest.fixture
def broker(redis_server):
    client = redis.Redis.from_url(redis_server.url, socket_timeout=10, socket_connect_timeout=5,
                                  health_check_interval=30)
    broker = DoorbellBroker(client=client, namespace="packed_" + uuid.uuid4().hex[:8])
    broker.declare_queue("work")
    yield broker
    broker.close()


def message(n: int) -> dramatiq.Message:
    return dramatiq.Message(queue_name="work", actor_name="run", args=(n,), kwargs={},
                            options={})


def dramatiqs_keys(broker) -> list[bytes]:
    """What Dramatiq keeps for the namespace besides its heartbeats: queues, messages, acks."""
    return sorted(k for k in broker.client.keys(f"{broker.namespace}:*")
                  if not k.endswith(b"__heartbeats__"))


def test_a_worker_drains_a_burst_and_leaves_no_message_or_ack_behind(broker):
    ran = []

    @dramatiq.actor(broker=broker, queue_name="work", actor_name="run")
    def run(n):
        ran.append(n)

    for n in range(200):
        run.send(n)
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    try:
        wait_until(lambda: len(ran) == 200, timeout=30, message="the burst")
        wait_until(lambda: dramatiqs_keys(broker) == [], timeout=10,
                   message="the acks to land")
    finally:
        worker.stop()
    assert sorted(ran) == list(range(200))


def test_a_redis_that_forgot_the_script_still_hands_out_and_acks(broker):
    broker.enqueue(message(1))
    consumer = broker.consume("work", prefetch=2, timeout=100)
    broker.client.script_flush()
    taken = next(consumer)
    assert taken.args == (1,)
    broker.client.script_flush()
    consumer.ack(taken)
    assert dramatiqs_keys(broker) == []


def test_an_ack_on_a_connection_the_server_closed_goes_out_on_a_new_one(broker, redis_server):
    broker.enqueue(message(1))
    consumer = broker.consume("work", prefetch=2, timeout=100)
    taken = next(consumer)
    pool = broker.client.connection_pool
    conn = pool.get_connection()   # the one connection the fetch used, idle in the pool
    conn.send_command("CLIENT", "ID")
    client_id = conn.read_response()
    pool.release(conn)
    assert redis.Redis.from_url(redis_server.url).client_kill_filter(_id=client_id) == 1
    consumer.ack(taken)
    assert dramatiqs_keys(broker) == []
