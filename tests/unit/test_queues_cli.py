"""topupctl queues [--json] [--watch] and topupctl queues dead [--queue] [--actor]
[--requeue | --purge], as an operator sees them (Redis is fakeredis here)."""
from __future__ import annotations

import io
import json
import types

import dramatiq
import fakeredis
import pytest
from dramatiq.brokers.redis import RedisBroker

from telemetry.queues import Queues
from topupctl import ops
from topupctl.cli import main


@pytest.fixture
def redis_client(monkeypatch):
    client = fakeredis.FakeRedis()
    monkeypatch.setattr(ops, "_queues", lambda: Queues(client))
    monkeypatch.setattr(ops, "declared_queues", lambda: {"topups", "callbacks", "queries"})
    return client


@pytest.fixture
def producer(redis_client):
    broker = RedisBroker(client=redis_client)
    return {
        "broker": broker,
        "push": dramatiq.actor(lambda topup_id: None, actor_name="push_topup", broker=broker,
                               queue_name="topups"),
        "apply": dramatiq.actor(lambda seq: None, actor_name="apply_callback", broker=broker,
                                queue_name="callbacks"),
    }


def dead_letter(producer, queue: str, count: int = 1) -> None:
    consumer = producer["broker"].consume(queue, prefetch=count)
    for _ in range(count):
        consumer.nack(next(consumer))


def run(capsys, *argv) -> str:
    main(list(argv))
    return capsys.readouterr().out


def test_queues_prints_a_table_of_every_queue_and_its_actors(producer, capsys):
    for n in range(3):
        producer["push"].send(f"tu_{n}")
    out = run(capsys, "queues")
    header, *rows = out.splitlines()
    assert header.split()[:6] == ["queue", "/", "actor", "ready", "delayed", "in"]
    table = {row.split()[0]: row.split()[1:5] for row in rows}
    assert table["topups"] == ["3", "0", "0", "0"]
    assert table["push_topup"] == ["3", "0", "0", "0"]
    assert table["queries"] == ["0", "0", "0", "0"]


def test_queues_json_is_one_object_with_every_queue(producer, capsys):
    producer["apply"].send(1)
    document = json.loads(run(capsys, "queues", "--json"))
    queues = {q["queue"]: q for q in document["data"]}
    assert set(queues) == {"topups", "callbacks", "queries"}
    assert queues["callbacks"]["ready"] == 1


def test_watch_refreshes_until_stopped(producer):
    out = io.StringIO()
    args = types.SimpleNamespace(json=True, watch=True, interval=0.01)
    assert ops.cmd_queues(args, out=out, iterations=3) == 0
    assert len(out.getvalue().splitlines()) == 3


def test_dead_lists_each_letter_with_its_actor_and_arguments(producer, capsys):
    producer["push"].send("tu_1")
    producer["apply"].send(41)
    dead_letter(producer, "topups")
    dead_letter(producer, "callbacks")
    out = run(capsys, "queues", "dead")
    assert 'push_topup("tu_1")' in out and "apply_callback(41)" in out
    assert "2 dead letters (all queues)" in out
    only = run(capsys, "queues", "dead", "--actor", "apply_callback")
    assert "apply_callback(41)" in only and "push_topup" not in only
    assert "1 dead letter (actor apply_callback)" in only


def test_requeue_and_purge_act_on_the_chosen_queue_only(producer, redis_client, capsys):
    for n in range(2):
        producer["push"].send(f"tu_{n}")
    producer["apply"].send(7)
    dead_letter(producer, "topups", 2)
    dead_letter(producer, "callbacks")
    assert "requeued 2 dead letters (queue topups)" in run(
        capsys, "queues", "dead", "--queue", "topups", "--requeue")
    assert redis_client.llen("dramatiq:topups") == 2
    assert redis_client.zcard("dramatiq:callbacks.XQ") == 1
    document = json.loads(run(capsys, "queues", "dead", "--queue", "callbacks", "--purge",
                              "--json"))
    assert document["purged"] == 1
    assert redis_client.zcard("dramatiq:callbacks.XQ") == 0


def test_requeue_and_purge_cannot_be_asked_together(redis_client):
    with pytest.raises(SystemExit):
        main(["queues", "dead", "--requeue", "--purge"])


def test_json_may_be_asked_before_or_after_dead(producer, capsys):
    producer["push"].send("tu_1")
    dead_letter(producer, "topups")
    for argv in (["queues", "--json", "dead"], ["queues", "dead", "--json"]):
        [letter] = json.loads(run(capsys, *argv))["data"]
        assert (letter["actor"], letter["args"]) == ("push_topup", ["tu_1"])
