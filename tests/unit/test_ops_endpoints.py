"""GET /ops/queues (bearer OPS_TOKEN) and GET /metrics (Prometheus text)."""
from __future__ import annotations

import dataclasses

import dramatiq
import fakeredis
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from ledger import accounts, db, inbox, pushes, settlement, topups
from tests.unit.conftest import CALLBACK_TOKEN
from tests.unit.test_crediting import failure_body, success_body

pytestmark = pytest.mark.both_databases

OPS_TOKEN = "ops-token-for-tests-0123"


def samples(text: str) -> dict:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def fake_redis():
    return fakeredis.FakeRedis()


@pytest.fixture
def make_client(settings, database, stub_broker, fake_redis):
    def make(ops_token=OPS_TOKEN, redis_client=None):
        app = create_app({"SETTINGS": dataclasses.replace(settings, ops_token=ops_token),
                          "BROKER": stub_broker, "REDIS": redis_client or fake_redis,
                          "BIND_DATABASE": False, "TESTING": True})
        return app.test_client()
    return make


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return samples(response.get_data(as_text=True))


def test_the_ops_endpoints_are_off_without_an_ops_token(make_client):
    response = make_client(ops_token=None).get("/ops/queues",
                                               headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {OPS_TOKEN}", "Bearer "])
def test_ops_queues_refuses_a_missing_or_wrong_token(make_client, header):
    headers = {"Authorization": header} if header else {}
    response = make_client().get("/ops/queues", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthorized"


def test_ops_queues_lists_every_queue_with_its_counts_and_actors(make_client, fake_redis):
    producer = RedisBroker(client=fake_redis)
    push = dramatiq.actor(lambda topup_id: None, actor_name="push_topup", broker=producer,
                          queue_name="topups")
    for n in range(3):
        push.send(f"tu_{n}")
    push.send_with_options(args=("tu_later",), delay=60_000)

    response = make_client().get("/ops/queues", headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert response.status_code == 200
    body = response.get_json()
    queues = {q["queue"]: q for q in body["data"]}
    assert {"topups", "callbacks", "queries"} <= set(queues)
    topups_queue = queues["topups"]
    assert (topups_queue["ready"], topups_queue["delayed"], topups_queue["in_progress"],
            topups_queue["dead"]) == (3, 1, 0, 0)
    assert topups_queue["by_actor"] == {"push_topup": {"ready": 3, "delayed": 1,
                                                       "in_progress": 0, "dead": 0}}
    assert queues["callbacks"]["ready"] == 0


def make_topups(account_id: str):
    """One top-up of each status but unknown: pending, succeeded twice, failed."""
    with db.connection():
        for n, outcome in enumerate(["pending", "credit", "credit", "fail"]):
            topup, _ = topups.create_topup(account_id, amount=100, phone="254712345678",
                                           reference=None, metadata={})
            if outcome == "pending":
                continue
            pushes.claim_push(topup.id)
            pushes.record_push_accepted(topup.id, checkout_request_id=f"ws_CO_{n}",
                                        merchant_request_id="m", query_after_s=60)
            body = (success_body(f"ws_CO_{n}", amount=100, receipt=f"RCPT00000{n}")
                    if outcome == "credit" else failure_body(f"ws_CO_{n}"))
            row, _ = inbox.store_callback(body, "127.0.0.1")
            settlement.apply_callback(row.seq)


def test_metrics_count_topups_by_status_from_the_ledger(make_client, database):
    with db.connection():
        account, _ = accounts.create_account("metrics")
    make_topups(account.id)
    found = scrape(make_client())
    assert found[("topup_topups", (("status", "pending"),))] == 1
    assert found[("topup_topups", (("status", "succeeded"),))] == 2
    assert found[("topup_topups", (("status", "failed"),))] == 1
    assert found[("topup_topups", (("status", "unknown"),))] == 0
    assert found[("topup_metrics_source_up", (("source", "database"),))] == 1


def test_metrics_show_queue_depths(make_client, fake_redis):
    producer = RedisBroker(client=fake_redis)
    apply = dramatiq.actor(lambda seq: None, actor_name="apply_callback", broker=producer,
                           queue_name="callbacks")
    for n in range(4):
        apply.send(n)
    found = scrape(make_client())
    assert found[("topup_queue_messages", (("queue", "callbacks"), ("state", "ready")))] == 4
    assert found[("topup_queue_messages", (("queue", "topups"), ("state", "dead")))] == 0
    assert found[("topup_queue_oldest_ready_age_seconds", (("queue", "callbacks"),))] >= 0
    assert found[("topup_metrics_source_up", (("source", "redis"),))] == 1


def test_metrics_time_every_callback_acknowledgement(make_client):
    client = make_client()
    key_ok = ("topup_callback_ack_duration_seconds_count", (("status", "200"),))
    key_404 = ("topup_callback_ack_duration_seconds_count", (("status", "404"),))
    before = scrape(client)
    for n in range(3):
        assert client.post(f"/daraja/callback/{CALLBACK_TOKEN}",
                           data=failure_body(f"ws_CO_ack{n}"),
                           content_type="application/json").status_code == 200
    assert client.post("/daraja/callback/" + "0" * 36, data=failure_body("x"),
                       content_type="application/json").status_code == 404
    after = scrape(client)
    assert after[key_ok] - before.get(key_ok, 0) == 3
    assert after[key_404] - before.get(key_404, 0) == 1


def test_metrics_still_answer_when_redis_is_down_and_say_so(make_client):
    unreachable = redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.2)
    found = scrape(make_client(redis_client=unreachable))
    assert found[("topup_metrics_source_up", (("source", "redis"),))] == 0
    assert found[("topup_metrics_source_up", (("source", "database"),))] == 1
    assert ("topup_topups", (("status", "pending"),)) in found
