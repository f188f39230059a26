"""Queue inspection reads Dramatiq's own keys in Redis: what was sent, delayed, fetched and
dead-lettered is what it counts; dead letters can be looked into, requeued (and then run)
or purged, a queue or an actor at a time.

A real RedisBroker runs on fakeredis (with Lua, so Dramatiq's dispatch.lua runs as it is).
"""
from __future__ import annotations

import time

import dramatiq
import fakeredis
import pytest
from dramatiq.brokers.redis import RedisBroker

from tests.waiting import wait_until
from telemetry.queues import Queues
from workers.observability import DeadLetterNotes


@pytest.fixture
def redis_client():
    return fakeredis.FakeRedis()


@pytest.fixture
def broker(redis_client):
    broker = RedisBroker(client=redis_client)
    broker.add_middleware(DeadLetterNotes())
    yield broker
    broker.close()


@pytest.fixture
def actors(broker):
    ran = []
    failing = {"push": True}

    def push_topup(topup_id, note=None):
        if failing["push"]:
            raise ValueError(f"Daraja refused {topup_id} for 0712345678")
        ran.append(("push_topup", topup_id))

    def query_topup(topup_id):
        ran.append(("query_topup", topup_id))

    def apply_callback(seq):
        ran.append(("apply_callback", seq))

    return {
        "push_topup": dramatiq.actor(push_topup, broker=broker, queue_name="topups",
                                     max_retries=0),
        "query_topup": dramatiq.actor(query_topup, broker=broker, queue_name="topups"),
        "apply_callback": dramatiq.actor(apply_callback, broker=broker, queue_name="callbacks"),
        "ran": ran, "failing": failing,
    }


def by_queue(counts):
    return {c.queue: c for c in counts}


def dead(redis_client, queue) -> int:
    """How many dead letters ``queue`` holds."""
    return by_queue(Queues(redis_client).counts([queue]))[queue].dead


def run_worker(broker, until, timeout=10.0):
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        wait_until(until, timeout)
    finally:
        worker.stop()


def test_counts_are_what_was_sent_delayed_fetched_and_dead_lettered(
        broker, actors, redis_client):
    for n in range(12):
        actors["push_topup"].send(f"tu_{n}")
    for n in range(5):
        actors["query_topup"].send_with_options(args=(f"tu_q{n}",), delay=3_600_000)
    for n in range(7):
        actors["apply_callback"].send(n)
    consumer = broker.consume("topups", prefetch=4)
    fetched = next(consumer)            # 4 fetched from Redis: 1 in hand, 3 prefetched
    consumer.nack(fetched)              # ... and one of them dead-lettered
    counts = by_queue(Queues(redis_client).counts())

    topups, callbacks = counts["topups"], counts["callbacks"]
    assert (topups.ready, topups.delayed, topups.in_progress, topups.dead) == (8, 5, 3, 1)
    assert (callbacks.ready, callbacks.delayed, callbacks.in_progress, callbacks.dead) == \
        (7, 0, 0, 0)


def test_a_declared_queue_with_nothing_in_it_is_listed_with_zeros(redis_client):
    [queries] = Queues(redis_client).counts(["queries"])
    assert (queries.queue, queries.ready, queries.delayed, queries.in_progress, queries.dead) == \
        ("queries", 0, 0, 0, 0)
    assert queries.oldest_ready_age_s is None


def test_counts_per_actor_add_up_to_the_queue(broker, actors, redis_client):
    for n in range(3):
        actors["push_topup"].send(f"tu_{n}")
    for n in range(2):
        actors["query_topup"].send(f"tu_{n}")
    actors["query_topup"].send_with_options(args=("tu_later",), delay=60_000)
    consumer = broker.consume("topups", prefetch=1)
    next(consumer)
    [topups] = Queues(redis_client).counts(by_actor=True)
    assert topups.by_actor == {
        "push_topup": {"ready": 2, "delayed": 0, "in_progress": 1, "dead": 0},
        "query_topup": {"ready": 2, "delayed": 1, "in_progress": 0, "dead": 0}}
    assert topups.by_actor_complete


def test_the_oldest_ready_message_ages_while_nobody_picks_it_up(actors, redis_client):
    now = [1_000_000.0]
    queues = Queues(redis_client, clock=lambda: now[0])
    sent_at = actors["apply_callback"].send(1).message_timestamp / 1000
    now[0] = sent_at + 42.5
    [callbacks] = queues.counts()
    assert callbacks.oldest_ready_age_s == pytest.approx(42.5, abs=0.01)
    [callbacks] = queues.counts(by_actor=True)
    assert callbacks.oldest_ready_age_s == pytest.approx(42.5, abs=0.01)


def test_messages_held_by_a_worker_whose_heartbeat_stopped_are_pointed_out(broker, actors,
                                                                           redis_client):
    for n in range(3):
        actors["apply_callback"].send(n)
    next(broker.consume("callbacks", prefetch=2))
    [callbacks] = Queues(redis_client).counts()
    assert (callbacks.in_progress, callbacks.held_by_dead_workers) == (2, 0)
    # an hour later the worker holding them has not been heard of since: its heartbeat is
    # far older than the broker's heartbeat timeout
    [callbacks] = Queues(redis_client, clock=lambda: time.time() + 3600).counts()
    assert (callbacks.in_progress, callbacks.held_by_dead_workers) == (2, 2)


def test_a_dead_letter_shows_its_actor_arguments_error_and_when_with_phones_masked(
        broker, actors, redis_client):
    before = time.time()
    actors["push_topup"].send("tu_dead", note="call 0712345678")
    run_worker(broker, lambda: dead(redis_client, "topups") == 1)
    [letter] = Queues(redis_client).dead_letters()
    assert (letter.queue, letter.actor, letter.args) == ("topups", "push_topup", ["tu_dead"])
    assert letter.kwargs == {"note": "call 2547****5678"}
    assert letter.error == "ValueError: Daraja refused tu_dead for 2547****5678"
    assert "0712345678" not in (letter.traceback or "")
    assert before <= letter.dead_at <= time.time()


def test_a_message_dead_without_a_retry_traceback_still_shows_its_error(broker, redis_client):
    def refuse(topup_id):
        raise ValueError(f"Daraja refused {topup_id} for 0712345678")
    # an exception it `throws` is dead-lettered at once, without Retries' traceback
    actor = dramatiq.actor(refuse, broker=broker, queue_name="topups", actor_name="refuse",
                           throws=(ValueError,))
    actor.send("tu_thrown")
    run_worker(broker, lambda: dead(redis_client, "topups") == 1)
    [letter] = Queues(redis_client).dead_letters()
    assert (letter.actor, letter.traceback) == ("refuse", None)
    assert letter.error == "ValueError: Daraja refused tu_thrown for 2547****5678"


def test_requeued_dead_letters_run(broker, actors, redis_client):
    for n in range(5):
        actors["push_topup"].send(f"tu_{n}")
    run_worker(broker, lambda: dead(redis_client, "topups") == 5)
    queues = Queues(redis_client)
    assert queues.requeue(queues.dead_letters(queue="topups")) == 5
    [topups] = queues.counts()
    assert (topups.ready, topups.dead) == (5, 0)

    actors["failing"]["push"] = False
    run_worker(broker, lambda: len(actors["ran"]) == 5)
    assert sorted(actors["ran"]) == [("push_topup", f"tu_{n}") for n in range(5)]
    [topups] = queues.counts(["topups"])
    assert (topups.ready, topups.in_progress, topups.dead) == (0, 0, 0)


def test_a_requeued_message_starts_its_retries_afresh(broker, actors, redis_client):
    actors["push_topup"].send("tu_1")
    run_worker(broker, lambda: dead(redis_client, "topups") == 1)
    queues = Queues(redis_client)
    queues.requeue(queues.dead_letters())
    consumer = broker.consume("topups", timeout=1000)
    message = next(consumer)
    consumer.close()
    assert message.args == ("tu_1",)
    assert "retries" not in message.options and "traceback" not in message.options
    assert "dead_letter_error" not in message.options


def test_dead_letters_can_be_chosen_by_actor_and_purged_alone(broker, actors, redis_client):
    actors["push_topup"].send("tu_1")
    actors["apply_callback"].send(9)
    consumer = broker.consume("callbacks", prefetch=1)
    consumer.nack(next(consumer))
    run_worker(broker, lambda: dead(redis_client, "topups") == 1)
    queues = Queues(redis_client)
    assert [d.actor for d in queues.dead_letters(actor="apply_callback")] == ["apply_callback"]
    assert queues.purge(queues.dead_letters(actor="push_topup")) == 1
    assert [d.actor for d in queues.dead_letters()] == ["apply_callback"]
    assert (dead(redis_client, "topups"), dead(redis_client, "callbacks")) == (0, 1)


def test_a_dead_letter_requeued_by_two_operators_at_once_moves_once(broker, actors,
                                                                    redis_client):
    actors["push_topup"].send("tu_1")
    run_worker(broker, lambda: dead(redis_client, "topups") == 1)
    queues = Queues(redis_client)
    letters = queues.dead_letters()
    assert queues.requeue(letters) + queues.requeue(letters) == 1
    topups = by_queue(queues.counts(["topups"]))["topups"]
    assert (topups.ready, topups.dead) == (1, 0)


def test_a_queue_only_redis_knows_of_is_found(redis_client):
    broker = RedisBroker(client=redis_client)
    dramatiq.actor(lambda: None, actor_name="stray", broker=broker, queue_name="legacy").send()
    assert "legacy" in Queues(redis_client).names(["topups"])
