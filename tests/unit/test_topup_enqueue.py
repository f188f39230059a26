"""POST /v1/topups sends its push once the top-up is committed: it reaches the workers'
queue in Redis; a push Redis refused is left to the scheduler's sweep of top-ups never
pushed, and the client still gets its 202."""
from __future__ import annotations

import datetime as dt
import json
import logging

import fakeredis
import pytest
from dramatiq.brokers.redis import RedisBroker

from ledger import db
from ledger.models import PUSH_QUEUED, TopUp
from tests.messages import taken
from tests.unit.contract_support import dev_settings, make_app  # noqa: F401
from workers import sweeps

pytestmark = pytest.mark.both_databases

GOOD = {"provider": "mpesa", "amount": 1000, "phone": "0712 345 678"}


@pytest.fixture
def redis_server():
    return fakeredis.FakeServer()


@pytest.fixture
def redis_broker(redis_server):
    broker = RedisBroker(client=fakeredis.FakeRedis(server=redis_server))
    yield broker
    broker.close()


@pytest.fixture
def client(dev_settings, database, redis_broker):
    return make_app(dev_settings, None, BROKER=redis_broker).test_client()


def post(client, account, headers=None):
    return client.post("/v1/topups", data=json.dumps(GOOD), content_type="application/json",
                       headers={**account["auth"], **(headers or {})})


def queued_pushes(broker) -> list[tuple]:
    """The arguments of every push a worker would now take from the queue."""
    return [tuple(message.args) for message in taken(broker, "topups")]


def test_a_created_topups_push_is_in_the_queue_when_the_client_has_its_answer(
        client, account, redis_broker):
    answer = post(client, account)
    assert answer.status_code == 202
    assert queued_pushes(redis_broker) == [(answer.get_json()["id"],)]


def test_a_push_redis_refused_is_answered_202_and_found_by_the_unsent_push_sweep(
        client, account, redis_broker, redis_server, caplog):
    redis_server.connected = False
    with caplog.at_level(logging.WARNING, logger="app.enqueue"):
        answer = post(client, account)
    assert answer.status_code == 202
    topup_id = answer.get_json()["id"]
    assert [r.getMessage() for r in caplog.records if getattr(r, "topup_id", None) == topup_id
            ] == ["enqueue failed; the scheduler will retry"]
    redis_server.connected = True
    assert queued_pushes(redis_broker) == []
    with db.connection():
        row = TopUp.get(TopUp.id == topup_id)
        assert row.push_state == PUSH_QUEUED and row.push_attempts == 0
        assert sweeps.unsent_pushes(now=row.created_at + dt.timedelta(seconds=31)) == [topup_id]


def test_a_replayed_request_pushes_nothing_again(client, account, redis_broker):
    first = post(client, account, {"Idempotency-Key": "same"})
    again = post(client, account, {"Idempotency-Key": "same"})
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    assert queued_pushes(redis_broker) == [(first.get_json()["id"],)]
