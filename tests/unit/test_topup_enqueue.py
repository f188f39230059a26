"""POST /v1/topups hands its push to the API's batching sender (app/enqueue.py) once the top-up
is committed: the push reaches the workers' queue, with a ring of the queue's doorbell, in a
round trip shared with the process's other enqueues; a push Redis refused is left to the
scheduler's sweep of top-ups never pushed, and the client still gets its 202."""
from __future__ import annotations

import datetime as dt
import json
import logging

import dramatiq
import fakeredis
import pytest

from ledger import db
from ledger.models import PUSH_QUEUED, TopUp
from tests.unit.contract_support import dev_settings, make_app  # noqa: F401
from tests.waiting import wait_until
from workers import broker as worker_broker, sweeps
from workers.doorbell import DoorbellBroker, bell_key

GOOD = {"provider": "mpesa", "amount": 1000, "phone": "0712 345 678"}


@pytest.fixture
def redis_broker():
    previous = dramatiq.get_broker()
    broker = DoorbellBroker(client=fakeredis.FakeRedis())
    # a Redis that has run Dramatiq's script before (a fresh one makes the first message go
    # again on its own, with rings of its own)
    broker.client.script_load(broker.scripts["dispatch"].script)
    yield broker
    worker_broker.install(previous)
    broker.close()


@pytest.fixture
def client(dev_settings, database, redis_broker):
    return make_app(dev_settings, None, BROKER=redis_broker).test_client()


def post(client, account):
    return client.post("/v1/topups", data=json.dumps(GOOD), content_type="application/json",
                       headers=account["auth"])


def queued_pushes(broker) -> list[tuple]:
    return [tuple(json.loads(raw)["args"])
            for raw in broker.client.hgetall("dramatiq:topups.msgs").values()]


def test_a_created_topups_push_reaches_the_queue_and_rings_its_doorbell(client, account,
                                                                        redis_broker):
    answer = post(client, account)
    assert answer.status_code == 202
    topup_id = answer.get_json()["id"]
    wait_until(lambda: queued_pushes(redis_broker), timeout=10, message="the push")
    assert queued_pushes(redis_broker) == [(topup_id,)]
    assert redis_broker.client.llen(bell_key("dramatiq", "topups")) == 1


def test_a_push_redis_refused_is_answered_202_and_found_by_the_unsent_push_sweep(
        client, account, redis_broker, monkeypatch, caplog):
    def redis_down(*args, **kwargs):
        raise ConnectionError("Redis is down")
    monkeypatch.setattr(redis_broker.client, "pipeline", redis_down)
    with caplog.at_level(logging.WARNING, logger="app.enqueue"):
        answer = post(client, account)
        assert answer.status_code == 202
        topup_id = answer.get_json()["id"]
        wait_until(lambda: any(getattr(r, "topup_id", None) == topup_id
                               for r in caplog.records), timeout=10, message="the lost push")
    with db.connection():
        row = TopUp.get(TopUp.id == topup_id)
        assert row.push_state == PUSH_QUEUED and row.push_attempts == 0
        assert sweeps.unsent_pushes(now=row.created_at + dt.timedelta(seconds=31)) == [topup_id]


def test_a_replayed_request_pushes_nothing_again(client, account, redis_broker):
    headers = {**account["auth"], "Idempotency-Key": "same"}
    first = client.post("/v1/topups", data=json.dumps(GOOD), content_type="application/json",
                        headers=headers)
    wait_until(lambda: queued_pushes(redis_broker), timeout=10, message="the push")
    again = client.post("/v1/topups", data=json.dumps(GOOD), content_type="application/json",
                        headers=headers)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    from app.enqueue import sender
    sender.close()   # sends whatever might still be waiting, then sends at once from here on
    assert queued_pushes(redis_broker) == [(first.get_json()["id"],)]
