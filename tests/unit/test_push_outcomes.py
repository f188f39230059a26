"""An STK push's fate: refused outright (failed, with Daraja's errorCode), certainly not sent
(put back and retried), or maybe sent (never sent again). Against the simulator over HTTP."""
import datetime as dt
import json

import peewee
import pytest

from daraja import DarajaClient, MemoryTokenCache
from ledger import db, pushes, settlement
from ledger.models import (
    FAILED, PENDING, PUSH_AMBIGUOUS, PUSH_QUEUED, PUSH_REFUSED, PUSH_SENT,
)
from tests.unit.stk_support import kinds, new_topup, pushes_received, row, sim
from workers import sweeps, tasks

pytestmark = pytest.mark.both_databases


def push(stk, topup_id):
    with db.connection():
        return tasks.push(topup_id, stk.daraja, query_after_s=60, redis=stk.redis)


# 25470002NNNN: the simulator refuses the push with Daraja's errorCodes, nothing processed.
@pytest.mark.parametrize("phone,error_code,message", [
    ("254700020001", "400.002.02", "Bad Request - Invalid PhoneNumber"),
    ("254700020002", "400.002.02", "Bad Request - Invalid Amount"),
    ("254700020003", "500.001.1001", "Merchant does not exist"),
    ("254700020004", "500.001.1001", "Wrong credentials"),
    ("254700020009", "404.001.01", "Resource not found"),
    ("254700020010", "401.003.01", "Invalid API call as no apiproduct match found"),
])
def test_a_push_daraja_refuses_outright_fails_the_topup_with_its_error_code(
        stk, account_id, daraja_sim, phone, error_code, message):
    topup_id = new_topup(account_id, phone)
    assert push(stk, topup_id) == ("refused", [])
    topup = row(topup_id)
    assert (topup.status, topup.push_state, topup.failure_code) == (FAILED, PUSH_REFUSED, error_code)
    assert topup.failure_reason == message
    assert push(stk, topup_id) == ("not_claimed", [])   # a redelivered message sends nothing
    assert pushes_received(daraja_sim) == 1


@pytest.mark.parametrize("phone,error_code", [
    ("254700020005", "500.001.1001"),   # Unable to lock subscriber
    ("254700020006", "500.003.02"),     # System is busy
    ("254700020007", "500.003.02"),     # Spike Arrest Violation
    ("254700020008", "500.003.03"),     # Quota Violation
    ("254700010007", None),             # a raw gateway fault: spike arrest, no errorCode
])
def test_a_push_daraja_did_not_take_is_put_back_and_retried_later(
        stk, account_id, daraja_sim, phone, error_code):
    topup_id = new_topup(account_id, phone)
    with pytest.raises(tasks.PushNotSentYet) as raised:
        push(stk, topup_id)
    assert raised.value.retry_after_s and raised.value.retry_after_s >= 10
    topup = row(topup_id)
    assert (topup.status, topup.push_state, topup.failure_code) == (PENDING, PUSH_QUEUED, None)
    assert kinds(topup_id)[-1] == "push_not_sent"
    # the retry may claim it again: Daraja answers this time
    sim(daraja_sim, "POST", "/__sim/faults",
        {"fault": "refuse:500.003.02:System is busy. Please try again in few minutes."})
    with pytest.raises(tasks.PushNotSentYet):
        push(stk, topup_id)
    assert row(topup_id).push_attempts == 2


def test_after_six_attempts_daraja_did_not_take_the_topup_fails_with_the_last_error_code(
        stk, account_id, daraja_sim):
    topup_id = new_topup(account_id, "254700020006")   # always "System is busy"
    for _ in range(tasks.MAX_PUSH_ATTEMPTS - 1):
        with pytest.raises(tasks.PushNotSentYet):
            push(stk, topup_id)
    assert push(stk, topup_id) == ("refused", [])
    topup = row(topup_id)
    assert (topup.status, topup.failure_code, topup.push_attempts) == (FAILED, "500.003.02", 6)
    assert pushes_received(daraja_sim) == 6


def test_a_push_that_could_not_connect_is_put_back_to_be_retried(stk, account_id, daraja_sim):
    topup_id = new_topup(account_id, "254712345678")
    tokens = MemoryTokenCache()
    DarajaClient(stk.daraja.config, token_cache=tokens).access_token()
    daraja_sim.stop()   # Daraja goes away, the token stays valid
    # a client with no kept-alive connection: the push meets "connection refused"
    stk.daraja = DarajaClient(stk.daraja.config, token_cache=tokens)
    with pytest.raises(tasks.PushNotSentYet) as raised:
        push(stk, topup_id)
    assert str(raised.value) == "ConnectionFailed"
    assert (row(topup_id).status, row(topup_id).push_state) == (PENDING, PUSH_QUEUED)


@pytest.mark.parametrize("phone,fault", [
    ("254700010009", None),              # 500 500.003.1001 Internal Server Error, processed
    ("254700010006", None),              # 200 with an HTML page, processed
    ("254712345678", "slow_answer"),     # answered after the client's read timeout
])
def test_a_push_whose_answer_was_lost_is_never_sent_again(
        stk, account_id, daraja_sim, phone, fault):
    if fault:
        sim(daraja_sim, "POST", "/__sim/config", {"slow_answer_s": 1.0})
        sim(daraja_sim, "POST", "/__sim/faults", {"fault": fault})
    topup_id = new_topup(account_id, phone)
    assert push(stk, topup_id) == ("ambiguous", [])
    topup = row(topup_id)
    assert (topup.status, topup.push_state, topup.checkout_request_id) == (
        PENDING, PUSH_AMBIGUOUS, None)
    assert "push_ambiguous" in kinds(topup_id)

    # the message delivered again, the sweeps, the deadline: nothing sends it a second time
    assert push(stk, topup_id) == ("not_claimed", [])
    with db.connection():
        assert topup_id not in sweeps.unsent_pushes(after=dt.timedelta(0),
                                                    released_after=dt.timedelta(0))
        assert settlement.give_up(topup_id, 1, now=topup.created_at + dt.timedelta(days=2)) \
            == "unknown"
    assert push(stk, topup_id) == ("not_claimed", [])
    assert pushes_received(daraja_sim) == 1
    [transaction] = sim(daraja_sim, "GET", "/__sim/transactions")["data"]
    assert transaction["phone"] == phone     # Daraja did process it: the prompt went out


def test_an_accepted_push_records_its_checkout_request_id_and_is_sent_once(
        stk, account_id, daraja_sim):
    topup_id = new_topup(account_id, "254712345678")
    assert push(stk, topup_id)[0] == "sent"
    assert push(stk, topup_id) == ("not_claimed", [])
    topup = row(topup_id)
    [transaction] = sim(daraja_sim, "GET", "/__sim/transactions")["data"]
    assert (topup.push_state, topup.checkout_request_id) == (
        PUSH_SENT, transaction["checkout_request_id"])
    assert pushes_received(daraja_sim) == 1


def test_a_claim_committed_with_its_answer_lost_is_put_back_and_the_retry_sends(
        stk, account_id, daraja_sim, monkeypatch):
    # The database dies as it commits the claim: the claim is in, the worker hears an error
    # and sent nothing. Left `sending`, the push would never be claimed again and the sweep
    # would call it ambiguous, settled by nothing but giving up (seen in test_recovery).
    topup_id = new_topup(account_id, "254712345678")
    claim = pushes.claim_push

    def claimed_but_answer_lost(*args, **kwargs):
        assert claim(*args, **kwargs) is not None
        raise peewee.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(pushes, "claim_push", claimed_but_answer_lost)
    with pytest.raises(tasks.PushOutcomeNotRecorded) as lost:
        push(stk, topup_id)
    monkeypatch.setattr(pushes, "claim_push", claim)
    assert pushes_received(daraja_sim) == 0
    # the outcome's own message, once the database answers again
    with db.connection():
        assert tasks.record_push_outcome(topup_id, lost.value.outcome) == []
    assert row(topup_id).push_state == PUSH_QUEUED
    assert push(stk, topup_id)[0] == "sent"
    assert pushes_received(daraja_sim) == 1


def test_an_accepted_push_whose_answer_the_database_refused_is_recorded_by_its_own_message(
        stk, account_id, daraja_sim, monkeypatch):
    # Daraja accepted the push while the database was down: the CheckoutRequestID is handed
    # on, never lost, and never a second prompt.
    topup_id = new_topup(account_id, "254712345678")

    def database_down(*args, **kwargs):
        raise peewee.OperationalError("could not connect to server")

    recorded = pushes.record_push_accepted
    monkeypatch.setattr(pushes, "record_push_accepted", database_down)
    with pytest.raises(tasks.PushOutcomeNotRecorded) as lost:
        push(stk, topup_id)
    monkeypatch.setattr(pushes, "record_push_accepted", recorded)
    [transaction] = sim(daraja_sim, "GET", "/__sim/transactions")["data"]
    assert lost.value.outcome["checkout_request_id"] == transaction["checkout_request_id"]

    with db.connection():
        tasks.record_push_outcome(topup_id, json.loads(json.dumps(lost.value.outcome)))
        tasks.record_push_outcome(topup_id, lost.value.outcome)   # delivered twice
    assert (row(topup_id).push_state, row(topup_id).checkout_request_id) == (
        PUSH_SENT, transaction["checkout_request_id"])
    assert push(stk, topup_id) == ("not_claimed", [])
    assert pushes_received(daraja_sim) == 1


def test_a_lost_claim_taken_for_abandoned_by_the_sweep_is_still_put_back_and_sent(
        stk, account_id, daraja_sim):
    topup_id = new_topup(account_id, "254712345678")
    claimed_at = dt.datetime(2026, 1, 1, 12, 0, 0, 654321)
    with db.connection():
        assert pushes.claim_push(topup_id, now=claimed_at) is not None   # its answer lost
        assert sweeps.abandoned_pushes(now=claimed_at + dt.timedelta(hours=1)) == [topup_id]
        assert row(topup_id).push_state == PUSH_AMBIGUOUS
        tasks.record_push_outcome(topup_id, {"kind": "claim_lost",
                                             "claimed_at": claimed_at.isoformat()})
    assert row(topup_id).push_state == PUSH_QUEUED
    assert push(stk, topup_id)[0] == "sent"
    assert pushes_received(daraja_sim) == 1


def test_a_lost_claim_answer_never_puts_back_a_claim_that_is_not_its_own(stk, account_id):
    # another worker's claim (a later push_started_at) stays: only ours may be undone
    topup_id = new_topup(account_id, "254712345678")
    with db.connection():
        ours = dt.datetime(2026, 1, 1, 12, 0, 0, 123456)
        assert pushes.claim_push(topup_id) is not None
        assert pushes.unclaim_push(topup_id, ours) is False
    assert row(topup_id).push_state != PUSH_QUEUED


def test_a_push_daraja_keeps_refusing_as_busy_waits_longer_each_time():
    # the upper bound of each wait doubles; Daraja's own hint is a floor
    assert [tasks.not_sent_delay_s(n, None) <= 5 * 2 ** (n - 1) for n in range(1, 7)] == [True] * 6
    assert tasks.not_sent_delay_s(6, None) > tasks.not_sent_delay_s(1, None) * 2
    assert tasks.not_sent_delay_s(1, 60.0) >= 60.0
