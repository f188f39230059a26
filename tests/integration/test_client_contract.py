"""The client's contract on real processes: gunicorn API processes and `dramatiq workers` on
PostgreSQL and Redis, with the Daraja simulator and a webhook receiver in the test process."""
from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis as redis_lib
import requests

from app import create_app
from ledger import db
from ledger.models import LedgerEntry, Wallet, WebhookAttempt, WebhookDelivery
from tests.integration.system import System
from tests.waiting import wait_until
from tests.webhook_receiver import Receiver, event_types


@pytest.fixture
def dev_system(tmp_path, request, redis_server, postgres_server, simulator):
    """The gateway on PostgreSQL, allowed to send webhooks to 127.0.0.1 (development)."""
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    database_url = postgres_server.create_database(f"t_contract_{digest}")
    redis_lib.Redis.from_url(redis_server.url).flushdb()
    system = System(tmp_path, redis_url=redis_server.url, database_url=database_url,
                    simulator_url=simulator.url, extra_env={"WEBHOOK_ALLOW_PRIVATE": "1"})
    yield system
    system.stop()


def fund(system, key, shillings):
    topup = system.topup(key, shillings, "0712 345 678")
    wait_until(lambda: system.get(key, f"/v1/topups/{topup['id']}")["status"] == "succeeded",
               timeout=60, message="the funding top-up to be credited")


def post(system, key, path, body, **headers):
    return requests.post(system.api_url + path, json=body, timeout=30,
                         headers={"Authorization": f"Bearer {key}", **headers})


def all_at_once(count, send):
    """Run ``send`` from ``count`` threads released together; their answers."""
    start = threading.Barrier(count)

    def one(_):
        start.wait(timeout=30)
        return send()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def test_50_debits_of_100_cents_racing_over_4_api_processes_leave_exactly_20_and_a_zero_balance(
        dev_system):
    dev_system.start_api(workers=4, threads=8)
    dev_system.start_workers(processes=1, threads=4)
    account_id, key = dev_system.create_account()
    fund(dev_system, key, 20)  # 2,000 cents

    answers = all_at_once(50, lambda: post(dev_system, key, "/v1/wallet/debits",
                                           {"amount_cents": 100, "description": "race"}))

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] * 20 + [402] * 30
    assert all(a.json()["code"] == "insufficient_funds" for a in answers if a.status_code == 402)
    assert dev_system.get(key, "/v1/wallet")["balance_cents"] == 0
    with db.connection():
        wallet = Wallet.get(Wallet.account == account_id)
        debits = list(LedgerEntry.select().where((LedgerEntry.wallet == wallet.id)
                                                 & (LedgerEntry.type == "debit")))
    assert len(debits) == 20
    assert sorted(e.balance_after_cents for e in debits) == list(range(0, 2000, 100))


def test_20_requests_with_one_idempotency_key_over_4_processes_debit_once(dev_system):
    dev_system.start_api(workers=4, threads=8)
    dev_system.start_workers(processes=1, threads=4)
    _, key = dev_system.create_account()
    fund(dev_system, key, 20)

    answers = all_at_once(20, lambda: post(dev_system, key, "/v1/wallet/debits",
                                           {"amount_cents": 700}, **{"Idempotency-Key": "once"}))

    assert [a.status_code for a in answers] == [201] * 20
    assert len({a.json()["id"] for a in answers}) == 1
    assert dev_system.get(key, "/v1/wallet")["balance_cents"] == 1300


def test_a_receiver_that_fails_its_first_try_verifies_both_events_from_real_workers(
        dev_system, simulator):
    dev_system.start_api(workers=2, threads=4)
    dev_system.start_workers(processes=2, threads=4)
    _, key = dev_system.create_account()
    receiver = Receiver(fail_first=1).start()
    try:
        created = post(dev_system, key, "/v1/webhook_endpoints",
                       {"url": receiver.url, "events": ["wallet.top_up", "topup.failed"]})
        assert created.status_code == 201, created.text
        receiver.secret = created.json()["secret"]

        paid = dev_system.topup(key, 100, "0712 345 678")
        cancelled = dev_system.topup(key, 100, "0700 001 032")  # the simulator's "cancelled"
        wait_until(lambda: len(receiver.verified) >= 2, timeout=90,
                   message="both events to reach the receiver")
    finally:
        receiver.stop()

    assert sorted(event_types(receiver)) == ["topup.failed", "wallet.top_up"]
    assert receiver.rejected == []
    by_type = {d["event"]["type"]: d["event"] for d in receiver.verified}
    assert by_type["wallet.top_up"]["data"]["topup"]["id"] == paid["id"]
    assert by_type["wallet.top_up"]["data"]["balance_cents"] == 10_000
    assert by_type["topup.failed"]["data"]["topup"]["id"] == cancelled["id"]
    listed = dev_system.get(key, "/v1/events")["data"]
    assert sorted(e["id"] for e in listed) == sorted(receiver.event_ids())
    with db.connection():
        statuses = [d.status for d in WebhookDelivery.select()]
        attempts = WebhookAttempt.select().count()
    assert statuses == ["delivered", "delivered"]
    assert attempts == receiver.attempts >= 3  # the first try failed, and it was recorded


def test_the_write_limit_is_counted_in_redis_across_api_processes(pg_system, redis_server):
    from settings import load
    settings = load({"DATABASE_URL": pg_system.env["DATABASE_URL"],
                     "REDIS_URL": redis_server.url,
                     "DARAJA_CALLBACK_TOKEN": pg_system.env["DARAJA_CALLBACK_TOKEN"]})
    apps = [create_app({"SETTINGS": settings, "BIND_DATABASE": False,
                        "RATELIMIT_WRITES": "5 per minute"}).test_client() for _ in range(2)]
    _, key = pg_system.create_account()
    auth = {"Authorization": f"Bearer {key}"}

    statuses = [apps[i % 2].post("/v1/wallet/debits", json={"amount_cents": 1},
                                 headers=auth).status_code for i in range(7)]

    assert statuses == [402] * 5 + [429] * 2
    stored = redis_lib.Redis.from_url(redis_server.url).keys("*ratelimit*")
    assert stored and not any(key.encode() in k for k in stored)  # counted by a hash of the key


def test_failed_authentications_are_counted_in_redis_across_api_processes(pg_system, redis_server):
    from settings import load
    settings = load({"DATABASE_URL": pg_system.env["DATABASE_URL"],
                     "REDIS_URL": redis_server.url,
                     "DARAJA_CALLBACK_TOKEN": pg_system.env["DARAJA_CALLBACK_TOKEN"]})
    apps = [create_app({"SETTINGS": settings, "BIND_DATABASE": False,
                        "RATELIMIT_FAILED_AUTHENTICATIONS": "4 per minute"}).test_client()
            for _ in range(2)]
    _, key = pg_system.create_account()
    wrong = {"Authorization": "Bearer sk_" + "0" * 32}
    guesser = {"REMOTE_ADDR": "203.0.113.9"}

    failures = [apps[i % 2].get("/v1/wallet", headers=wrong, environ_base=guesser).status_code
                for i in range(4)]
    right = [app.get("/v1/wallet", headers={"Authorization": f"Bearer {key}"},
                     environ_base=guesser).status_code for app in apps]

    assert failures == [401] * 4
    assert right == [429, 429]


def test_generated_requests_on_postgresql_get_no_5xx_and_no_answer_outside_the_document(
        pg_system, redis_server):
    """The unit suite fuzzes on SQLite; PostgreSQL refuses some text SQLite takes (NUL)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
    from schemathesis import GenerationMode

    from settings import load
    from tests.unit.contract_support import FUZZ_CHECKS, credit, fail, public_resolver

    settings = load({"DATABASE_URL": pg_system.env["DATABASE_URL"],
                     "REDIS_URL": redis_server.url, "WEBHOOK_ALLOW_PRIVATE": "1",
                     "DARAJA_CALLBACK_TOKEN": pg_system.env["DARAJA_CALLBACK_TOKEN"]})
    app = create_app({"SETTINGS": settings, "BIND_DATABASE": False,
                      "RATELIMIT_WRITES": "100000 per second",
                      "WEBHOOK_RESOLVER": public_resolver})
    account_id, key = pg_system.create_account()
    credit(account_id, 500)
    fail(account_id)
    auth = {"Authorization": f"Bearer {key}"}
    app.test_client().post("/v1/webhook_endpoints", headers=auth, json={
        "url": "https://hooks.example.com/x", "events": ["wallet.top_up"]})
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [schema[path][method.upper()] for path, ops in schema.raw_schema["paths"].items()
                  for method in ops if path.startswith("/v1/")]
    cases = st.one_of(*[op.as_strategy(mode) for op in operations
                        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])

    @given(cases)
    @hypothesis_settings(max_examples=600, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))
    def no_surprise(case):
        case.call_and_validate(headers=auth, checks=FUZZ_CHECKS)

    no_surprise()
