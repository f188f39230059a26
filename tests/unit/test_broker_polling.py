"""How our Redis broker's consumers poll (workers/broker.py): delay queues at Dramatiq's
default interval, and the first re-poll after an empty fetch one backoff step later; what
is fetched, acked and requeued is Dramatiq's own. Runs on fakeredis (Lua included); the
sleeps are recorded, never waited for."""
from __future__ import annotations

import dramatiq
import fakeredis
import pytest
from dramatiq.brokers.redis import RedisBroker

from workers import broker as worker_broker


@pytest.fixture
def broker():
    broker = worker_broker.GatewayRedisBroker(client=fakeredis.FakeRedis())
    yield broker
    broker.close()


@pytest.fixture
def sleeps(monkeypatch):
    recorded = []
    monkeypatch.setattr("dramatiq.brokers.redis.time.sleep", recorded.append)
    return recorded


def test_it_is_a_redis_broker_with_our_middleware():
    built = worker_broker.build("redis://127.0.0.1:9/0")
    assert isinstance(built, RedisBroker)
    assert any(type(m).__name__ == "DatabaseConnections" for m in built.middleware)


def test_a_delay_queue_is_polled_at_most_once_a_second(broker):
    broker.declare_queue("topups")
    assert broker.consume("topups.DQ", prefetch=8, timeout=100).timeout == \
        worker_broker.DELAY_QUEUE_POLL_MS
    assert broker.consume("topups", prefetch=8, timeout=100).timeout == 100
    # a longer worker timeout is kept as it is
    assert broker.consume("topups.DQ", prefetch=8, timeout=5000).timeout == 5000


def test_an_empty_fetch_starts_one_backoff_step_later(broker, sleeps):
    broker.declare_queue("topups")
    consumer = broker.consume("topups", prefetch=8, timeout=100)
    assert next(consumer) is None
    # Dramatiq's first step is 5–10 ms; ours 10–20 ms
    assert len(sleeps) == 1 and 0.010 <= sleeps[0] <= 0.020


def test_a_saturated_consumer_keeps_dramatiqs_short_wait(broker, sleeps):
    broker.declare_queue("topups")
    consumer = broker.consume("topups", prefetch=1, timeout=100)
    consumer.queued_message_ids.add("in-flight")   # as many outstanding as it may prefetch
    assert next(consumer) is None
    assert len(sleeps) == 1 and 0.005 <= sleeps[0] <= 0.010


def test_messages_still_come_and_are_acked(broker):
    @dramatiq.actor(queue_name="topups", broker=broker)
    def push_topup(topup_id):
        pass

    push_topup.send("tu_1")
    consumer = broker.consume("topups", prefetch=8, timeout=100)
    message = next(consumer)
    assert message is not None and list(message.args) == ["tu_1"]
    consumer.ack(message)
    assert broker.client.hlen("dramatiq:topups.msgs") == 0
