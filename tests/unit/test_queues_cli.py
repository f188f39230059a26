"""topupctl queues [--json] [--watch] and topupctl queues dead [--queue] [--actor]
[--requeue | --purge], as an operator sees them, on the session's redis-server."""
from __future__ import annotations

import dataclasses
import io
import json
import types

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

import bootstrap
from topupctl import ops
from topupctl.cli import main


@pytest.fixture
def redis_client(redis_server, settings, stub_broker, monkeypatch):
    """The gateway's Redis, empty, as topupctl finds it: named by REDIS_URL, and by the
    settings this process is configured with (for the commands called as functions)."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    bootstrap.configure("tests", dataclasses.replace(settings, redis_url=redis_server.url),
                        broker=stub_broker, database=False, logging=False)
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


def declared_queues() -> set[str]:
    """The queues of the gateway's actors: listed even when empty."""
    return {actor.queue_name for actor in bootstrap.declared_actors()}


def counts(capsys) -> dict:
    """Each queue's (ready, dead), as ``topupctl queues --json`` tells them."""
    return {q["queue"]: (q["ready"], q["dead"])
            for q in json.loads(run(capsys, "queues", "--json"))["data"]}


@pytest.fixture
def producer(redis_client):
    broker = RedisBroker(client=redis_client)
    yield {
        "broker": broker,
        "push": dramatiq.actor(lambda topup_id: None, actor_name="push_topup", broker=broker,
                               queue_name="topups"),
        "apply": dramatiq.actor(lambda seq: None, actor_name="apply_callback", broker=broker,
                                queue_name="callbacks"),
    }
    broker.close()


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
    assert set(queues) == declared_queues() >= {"topups", "callbacks", "queries"}
    assert queues["callbacks"]["ready"] == 1


def test_watch_refreshes_until_stopped(producer):
    # called as a function: --watch runs until Ctrl-C
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
    assert (counts(capsys)["topups"], counts(capsys)["callbacks"]) == ((2, 0), (0, 1))
    document = json.loads(run(capsys, "queues", "dead", "--queue", "callbacks", "--purge",
                              "--json"))
    assert document["purged"] == 1
    assert (counts(capsys)["topups"], counts(capsys)["callbacks"]) == ((2, 0), (0, 0))


def test_requeue_and_purge_cannot_be_asked_together(redis_client):
    with pytest.raises(SystemExit):
        main(["queues", "dead", "--requeue", "--purge"])


def test_json_may_be_asked_before_or_after_dead(producer, capsys):
    producer["push"].send("tu_1")
    dead_letter(producer, "topups")
    for argv in (["queues", "--json", "dead"], ["queues", "dead", "--json"]):
        [letter] = json.loads(run(capsys, *argv))["data"]
        assert (letter["actor"], letter["args"]) == ("push_topup", ["tu_1"])
