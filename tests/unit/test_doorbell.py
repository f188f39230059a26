"""Doorbells (workers/doorbell.py): a sent message rings its queue's bell, an idle consumer
waits on the bell instead of polling, and still wakes for what only it knows about (a delayed
message coming due, an ack freeing room to fetch). A real DoorbellBroker on fakeredis (with
Lua, so Dramatiq's dispatch.lua runs as it is).

Consumers here wait up to a minute between fetches: whatever wakes them is a ring, a due
message or an ack, never the poll interval.
"""
from __future__ import annotations

import threading

import dramatiq
import fakeredis
import pytest
from dramatiq.errors import ConnectionClosed
from redis.backoff import NoBackoff
from redis.retry import Retry

from telemetry.queues import Queues
from tests.waiting import wait_until
from workers.doorbell import RINGS_KEPT, DoorbellBroker, DoorbellConsumer, bell_key, fetch_batch

A_MINUTE_MS = 60_000


@pytest.fixture
def redis_client():
    return fakeredis.FakeRedis()


@pytest.fixture
def broker(redis_client):
    broker = DoorbellBroker(client=redis_client)
    broker.longest_wait_s = 60   # fakeredis has no socket timeout to stay below
    redis_client.script_load(broker.scripts["dispatch"].script)   # as after a first enqueue
    broker.declare_queue("topups")
    yield broker
    broker.close()


def message(queue_name="topups", n=0):
    return dramatiq.Message(queue_name=queue_name, actor_name="push_topup", args=(f"tu_{n}",),
                            kwargs={}, options={})


class Waiting:
    """``next(consumer)`` in a thread of its own, as Dramatiq's ConsumerThread calls it."""

    def __init__(self, consumer):
        self.consumer = consumer
        self.answers = []
        self.thread = threading.Thread(target=lambda: self.answers.append(next(consumer)),
                                       daemon=True)
        self.thread.start()

    def returned(self):
        return not self.thread.is_alive()


@pytest.fixture
def release(broker):
    """Rings every bell at the end, so that no waiting thread outlives its test."""
    waiting = []
    yield waiting.append
    for w in waiting:
        broker.ring(w.consumer.queue_name)
        w.thread.join(timeout=5)


def test_a_sent_message_rings_its_queues_doorbell(broker, redis_client):
    broker.enqueue(message())
    assert redis_client.llen("dramatiq:topups") == 1
    assert redis_client.llen(bell_key("dramatiq", "topups")) == 1


def test_a_delayed_message_rings_the_delay_queues_doorbell(broker, redis_client):
    broker.enqueue(message(), delay=60_000)
    assert redis_client.llen(bell_key("dramatiq", "topups.DQ")) == 1
    assert redis_client.llen(bell_key("dramatiq", "topups")) == 0


def test_a_bell_nobody_answers_keeps_a_bounded_number_of_rings(broker, redis_client):
    for n in range(RINGS_KEPT * 5):
        broker.enqueue(message(n=n))
    assert redis_client.llen("dramatiq:topups") == RINGS_KEPT * 5
    assert redis_client.llen(bell_key("dramatiq", "topups")) == RINGS_KEPT


def test_bells_are_not_mistaken_for_queues(broker, redis_client):
    broker.enqueue(message())
    broker.enqueue(message(), delay=60_000)
    assert Queues(redis_client).names() == ["topups"]


def test_a_redis_that_lost_its_scripts_still_gets_the_message_and_the_ring(
        broker, redis_client):
    broker.enqueue(message(n=1))
    redis_client.script_flush()
    redis_client.delete(bell_key("dramatiq", "topups"))
    broker.enqueue(message(n=2))
    assert redis_client.llen("dramatiq:topups") == 2
    assert redis_client.llen(bell_key("dramatiq", "topups")) >= 1


def test_a_broken_bell_does_not_stop_a_message_from_being_sent(broker, redis_client):
    redis_client.set(bell_key("dramatiq", "topups"), "not a list")
    broker.enqueue(message())
    assert redis_client.llen("dramatiq:topups") == 1


def test_an_idle_consumer_fetches_as_soon_as_a_message_is_sent(broker, release):
    consumer = broker.consume("topups", prefetch=2, timeout=A_MINUTE_MS)
    assert isinstance(consumer, DoorbellConsumer)
    waiting = Waiting(consumer)   # nothing to fetch: it waits on the bell
    release(waiting)
    broker.enqueue(message(n=7))
    wait_until(waiting.returned, timeout=10, message="the consumer to wake up")
    assert next(consumer).args == ("tu_7",)


def test_a_consumer_holding_a_delayed_message_wakes_when_it_is_due(broker, release):
    broker.enqueue(message(n=3), delay=200)
    consumer = broker.consume("topups.DQ", prefetch=10, timeout=A_MINUTE_MS)
    delayed = next(consumer)
    assert delayed.args == ("tu_3",) and "eta" in delayed.options
    waiting = Waiting(consumer)   # nothing more to fetch, one message due in 200 ms
    release(waiting)
    wait_until(waiting.returned, timeout=10, message="the consumer to wake for the due message")


def test_a_consumer_with_no_room_to_fetch_wakes_when_a_message_is_acked(broker, release):
    broker.enqueue(message(n=1))
    broker.enqueue(message(n=2))
    consumer = broker.consume("topups", prefetch=1, timeout=A_MINUTE_MS)
    first = next(consumer)
    waiting = Waiting(consumer)   # one outstanding of one allowed: no fetch, no bell
    release(waiting)
    consumer.ack(first)
    wait_until(waiting.returned, timeout=10, message="the consumer to wake after the ack")
    assert next(consumer).args == ("tu_2",)


def test_messages_put_back_by_a_stopping_consumer_ring_for_the_others(broker, redis_client):
    broker.enqueue(message(n=1))
    redis_client.delete(bell_key("dramatiq", "topups"))
    consumer = broker.consume("topups", prefetch=1, timeout=A_MINUTE_MS)
    taken = next(consumer)
    redis_client.delete(bell_key("dramatiq", "topups"))
    consumer.requeue(iter([taken]))
    assert redis_client.llen("dramatiq:topups") == 1
    assert redis_client.llen(bell_key("dramatiq", "topups")) == 1


def test_a_worker_runs_a_message_retried_with_a_short_delay(broker):
    ran = []

    @dramatiq.actor(broker=broker, queue_name="topups", max_retries=3)
    def push_topup(topup_id):
        ran.append(topup_id)
        if len(ran) == 1:
            raise dramatiq.Retry(delay=100)

    worker = dramatiq.Worker(broker, worker_timeout=A_MINUTE_MS, worker_threads=1)
    worker.start()
    try:
        push_topup.send("tu_1")
        wait_until(lambda: len(ran) == 2, timeout=10, message="the retry")
    finally:
        for thread in worker.workers:   # idle worker threads wait worker_timeout for work
            thread.stop()
        worker.stop(timeout=100)
        for name in broker.get_declared_queues() | broker.get_declared_delay_queues():
            broker.ring(name)


# --- the ack and the fetch --------------------------------------------------------------------

def test_an_acked_message_is_gone_from_redis(broker, redis_client):
    broker.enqueue(message(n=1))
    consumer = broker.consume("topups", prefetch=2, timeout=A_MINUTE_MS)
    taken = next(consumer)
    assert taken.args == ("tu_1",)
    assert redis_client.hlen("dramatiq:topups.msgs") == 1
    consumer.ack(taken)
    assert redis_client.hlen("dramatiq:topups.msgs") == 0
    assert redis_client.smembers(f"dramatiq:__acks__.{broker.broker_id}.topups") == set()


def test_a_redis_that_lost_its_scripts_still_hands_out_and_acks_messages(broker, redis_client):
    broker.enqueue(message(n=1))
    consumer = broker.consume("topups", prefetch=2, timeout=A_MINUTE_MS)
    redis_client.script_flush()
    taken = next(consumer)
    assert taken.args == ("tu_1",)
    redis_client.script_flush()
    consumer.ack(taken)
    assert redis_client.hlen("dramatiq:topups.msgs") == 0


def test_an_ack_redis_cannot_take_is_retried_by_dramatiq_and_lands_later():
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server, retry=Retry(NoBackoff(), 1))
    broker = DoorbellBroker(client=client)
    broker.declare_queue("topups")
    try:
        broker.enqueue(message(n=1))
        consumer = broker.consume("topups", prefetch=2, timeout=A_MINUTE_MS)
        taken = next(consumer)
        server.connected = False
        # ConnectionClosed: Dramatiq's post_process_message tries the ack again
        with pytest.raises(ConnectionClosed):
            consumer.ack(taken)
        server.connected = True
        assert client.hlen("dramatiq:topups.msgs") == 1   # not acked: still Dramatiq's
        consumer.ack(taken)
        assert client.hlen("dramatiq:topups.msgs") == 0
    finally:
        broker.close()


# --- fetching in batches ------------------------------------------------------------------------

def test_a_busy_consumer_fetches_once_a_quarter_of_its_prefetch_is_free(broker):
    for n in range(20):
        broker.enqueue(message(n=n))
    consumer = broker.consume("topups", prefetch=8, timeout=50)
    handed_out = [next(consumer) for _ in range(8)]
    assert [m.args for m in handed_out] == [(f"tu_{n}",) for n in range(8)]
    consumer.ack(handed_out[0])
    assert next(consumer) is None   # one free of eight: it waits for another ack
    consumer.ack(handed_out[1])
    assert next(consumer).args == ("tu_8",)
    assert len(consumer.message_cache) == 1   # both free places filled in one fetch


def test_a_consumer_with_less_than_four_to_prefetch_fetches_on_every_ack(broker):
    for n in range(3):
        broker.enqueue(message(n=n))
    consumer = broker.consume("topups", prefetch=2, timeout=50)
    first, _ = next(consumer), next(consumer)
    consumer.ack(first)
    assert next(consumer).args == ("tu_2",)


def test_the_fetch_batch_is_a_quarter_of_the_prefetch_within_bounds():
    assert [fetch_batch(p) for p in (1, 3, 4, 8, 16, 64, 4000)] == [1, 1, 1, 2, 4, 16, 16]
