"""The scheduler's sweeps find what the queues lost, and re-driving it is harmless."""
import dataclasses
import datetime as dt

import fakeredis
import pytest
import requests

import bootstrap
from ledger import db, inbox, pushes, topups
from ledger.models import FAILED, PENDING, PUSH_AMBIGUOUS, SUCCEEDED, UNKNOWN, TopUp, utcnow
from simulator.server import SimulatorConfig, SimulatorServer
from workers import scheduler, sweeps

pytestmark = pytest.mark.both_databases


@pytest.fixture
def simulator():
    sim = SimulatorServer(host="127.0.0.1", port=0, config=SimulatorConfig(callback_delay_s=0.05))
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def worker_runtime(settings, database, simulator, stub_broker):
    configured = dataclasses.replace(settings, daraja_base_url=simulator.url,
                                     public_base_url="http://127.0.0.1:9")
    bootstrap.configure("tests", configured, broker=stub_broker, redis=fakeredis.FakeRedis(),
                        database=False, logging=False)
    return configured


def new_topup(account_id, phone="254712345678", created_ago_s=0):
    with db.connection():
        topup, _ = topups.create_topup(account_id, amount=100, phone=phone, reference=None,
                                       metadata={})
        if created_ago_s:
            past = utcnow() - dt.timedelta(seconds=created_ago_s)
            TopUp.update(created_at=past, updated_at=past).where(TopUp.id == topup.id).execute()
    return topup.id


def status(topup_id):
    with db.connection():
        return TopUp.get(TopUp.id == topup_id)


def sim_stats(sim):
    return requests.get(sim.url + "/__sim/stats", timeout=5).json()


def test_a_topup_whose_enqueue_was_lost_is_pushed_by_the_sweep(
        worker_runtime, account, stub_broker, stub_worker, simulator):
    lost = new_topup(account["id"], created_ago_s=60)
    fresh = new_topup(account["id"], phone="254712345679")
    found = scheduler.sweep_once(worker_runtime.stk_give_up_after_s)
    assert found["unsent_pushes"] == 1
    stub_broker.join("topups")
    assert status(lost).checkout_request_id is not None
    assert status(fresh).push_attempts == 0   # too young: its own message is still on its way
    assert sim_stats(simulator)["stkpush"] == 1


def test_two_schedulers_sweeping_at_once_push_once(
        worker_runtime, account, stub_broker, stub_worker, simulator):
    new_topup(account["id"], created_ago_s=60)
    scheduler.sweep_once(worker_runtime.stk_give_up_after_s)
    scheduler.sweep_once(worker_runtime.stk_give_up_after_s)
    stub_broker.join("topups")
    assert sim_stats(simulator)["stkpush"] == 1


def test_a_push_abandoned_mid_send_becomes_ambiguous_and_is_never_sent_again(
        worker_runtime, account, stub_broker, stub_worker, simulator):
    topup_id = new_topup(account["id"])
    with db.connection():
        pushes.claim_push(topup_id)   # a worker took it, then died before any answer
        TopUp.update(push_started_at=utcnow() - dt.timedelta(minutes=10)).where(
            TopUp.id == topup_id).execute()
    found = scheduler.sweep_once(worker_runtime.stk_give_up_after_s)
    assert found["abandoned_pushes"] == 1
    stub_broker.join("topups")
    assert status(topup_id).push_state == PUSH_AMBIGUOUS
    assert status(topup_id).status == PENDING
    assert sim_stats(simulator)["stkpush"] == 0


def test_a_callback_stored_but_never_applied_is_applied_by_the_sweep(
        worker_runtime, account, stub_broker, stub_worker):
    topup_id = new_topup(account["id"])
    body = (b'{"Body": {"stkCallback": {"CheckoutRequestID": "ws_CO_SWEEP", "ResultCode": 0, '
            b'"CallbackMetadata": {"Item": [{"Name": "Amount", "Value": 100}, '
            b'{"Name": "MpesaReceiptNumber", "Value": "SWEEP00001"}]}}}}')
    with db.connection():
        pushes.claim_push(topup_id)
        pushes.record_push_accepted(topup_id, checkout_request_id="ws_CO_SWEEP",
                                    merchant_request_id=None, query_after_s=3600)
        row, _ = inbox.store_callback(body, None)   # the enqueue after it was lost
        from ledger.models import Callback
        Callback.update(received_at=utcnow() - dt.timedelta(minutes=1)).where(
            Callback.seq == row.seq).execute()
    assert scheduler.sweep_once(worker_runtime.stk_give_up_after_s)["unapplied_callbacks"] == 1
    stub_broker.join("callbacks")
    assert status(topup_id).status == SUCCEEDED


def test_past_the_give_up_deadline_a_pushed_topup_is_unknown_and_an_unsent_one_failed(
        worker_runtime, account):
    pushed = new_topup(account["id"])
    unsent = new_topup(account["id"], phone="254712345679")
    with db.connection():
        pushes.claim_push(pushed)
        pushes.record_push_accepted(pushed, checkout_request_id="ws_CO_OLD",
                                    merchant_request_id=None, query_after_s=60)
        long_ago = utcnow() - dt.timedelta(days=2)
        TopUp.update(created_at=long_ago, pushed_at=long_ago).execute()
        given_up = sweeps.overdue_for_giving_up(86400)
    assert sorted(given_up) == sorted([pushed, unsent])
    assert status(pushed).status == UNKNOWN
    assert (status(unsent).status, status(unsent).failure_code) == (FAILED, "not_sent")
