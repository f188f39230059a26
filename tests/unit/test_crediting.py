"""Settling a top-up from stored callbacks: once, whatever arrives, however often."""
import json

import pytest

from ledger import accounts, db, inbox, pushes, settlement, topups
from ledger.models import (
    FAILED, PENDING, SUCCEEDED, UNKNOWN, Callback, LedgerEntry, OrphanPayment, TopUp, Wallet,
)

pytestmark = pytest.mark.both_databases


def success_body(checkout, amount=1000, receipt="PE73OJNTHB", phone=254712345678, amount_form=None):
    return json.dumps({"Body": {"stkCallback": {
        "MerchantRequestID": "22250-15592488-1", "CheckoutRequestID": checkout, "ResultCode": 0,
        "ResultDesc": "The service request is processed successfully.",
        "CallbackMetadata": {"Item": [
            {"Name": "Amount", "Value": amount_form if amount_form is not None else amount},
            {"Name": "MpesaReceiptNumber", "Value": receipt}, {"Name": "Balance"},
            {"Name": "TransactionDate", "Value": 20210507172318},
            {"Name": "PhoneNumber", "Value": phone}]}}}}).encode()


def failure_body(checkout, code=1032, desc="Request cancelled by user"):
    return json.dumps({"Body": {"stkCallback": {
        "MerchantRequestID": "f1e2", "CheckoutRequestID": checkout, "ResultCode": code,
        "ResultDesc": desc}}}).encode()


@pytest.fixture
def pushed(database):
    """A top-up whose push Daraja accepted, with CheckoutRequestID ws_CO_1."""
    with db.connection():
        account, _ = accounts.create_account("a")
        topup, _ = topups.create_topup(account.id, amount=1000, phone="254712345678",
                                       reference="INV42", metadata={})
        pushes.claim_push(topup.id)
        pushes.record_push_accepted(topup.id, checkout_request_id="ws_CO_1",
                                    merchant_request_id="m1", query_after_s=60)
    return {"account": account.id, "topup": topup.id}


def deliver(body):
    with db.connection():
        row, _ = inbox.store_callback(body, "127.0.0.1")
        return settlement.apply_callback(row.seq)


def state(pushed):
    with db.connection():
        return (TopUp.get(TopUp.id == pushed["topup"]),
                Wallet.get(Wallet.account == pushed["account"]).balance_cents,
                LedgerEntry.select().count())


def test_a_success_callback_credits_the_wallet_once_with_its_receipt(pushed):
    assert deliver(success_body("ws_CO_1")) == "credited"
    topup, balance, entries = state(pushed)
    assert topup.status == SUCCEEDED and topup.mpesa_receipt == "PE73OJNTHB"
    assert balance == 100_000 and entries == 1
    with db.connection():
        entry = LedgerEntry.get()
    assert (entry.amount_cents, entry.balance_after_cents, entry.topup_id) == (100_000, 100_000, pushed["topup"])


def test_the_same_callback_delivered_many_times_credits_once(pushed):
    outcomes = [deliver(success_body("ws_CO_1")) for _ in range(5)]
    assert outcomes == ["credited"] + ["duplicate"] * 4
    _, balance, entries = state(pushed)
    assert (balance, entries) == (100_000, 1)


def test_reapplying_one_stored_callback_credits_once(pushed):
    with db.connection():
        row, _ = inbox.store_callback(success_body("ws_CO_1"), None)
        results = [settlement.apply_callback(row.seq) for _ in range(3)]
    assert results.count("credited") == 1
    assert state(pushed)[1:] == (100_000, 1)


@pytest.mark.parametrize("amount_form", [1000, 1000.0, "1000.00"])
def test_the_amount_is_read_whatever_its_json_form(pushed, amount_form):
    deliver(success_body("ws_CO_1", amount_form=amount_form))
    assert state(pushed)[1] == 100_000


@pytest.mark.parametrize("code", [1032, 1037, 1, 2001, 1001, 1019, 1025, 9999, "1032"])
def test_a_documented_failure_code_fails_the_topup_with_darajas_code(pushed, code):
    assert deliver(failure_body("ws_CO_1", code=code, desc="[STK_CB - ]whatever")) == "failed"
    topup, balance, entries = state(pushed)
    assert topup.status == FAILED and topup.failure_code == str(code)
    assert topup.failure_reason == "[STK_CB - ]whatever"
    assert (balance, entries) == (0, 0)


def test_an_undocumented_code_does_not_fail_the_topup(pushed):
    assert deliver(failure_body("ws_CO_1", code=42, desc="Something new")) == "unknown_code"
    assert state(pushed)[0].status == PENDING


def test_a_success_is_never_downgraded_by_a_later_failure(pushed):
    deliver(success_body("ws_CO_1"))
    assert deliver(failure_body("ws_CO_1")) == "duplicate"
    topup, balance, _ = state(pushed)
    assert topup.status == SUCCEEDED and balance == 100_000


def test_a_success_for_an_unknown_checkout_request_is_kept_as_an_orphan(database):
    assert deliver(success_body("ws_CO_nobody", receipt="ORPHAN0001")) == "orphan"
    assert deliver(success_body("ws_CO_nobody", receipt="ORPHAN0001")) == "orphan"
    with db.connection():
        orphans = list(OrphanPayment.select())
    assert [(o.checkout_request_id, o.mpesa_receipt, o.amount_cents) for o in orphans] == [
        ("ws_CO_nobody", "ORPHAN0001", 100_000)]


def test_a_callback_that_beats_the_push_answer_credits_when_the_answer_is_recorded(database):
    with db.connection():
        account, _ = accounts.create_account("a")
        topup, _ = topups.create_topup(account.id, amount=50, phone="254712345678",
                                       reference=None, metadata={})
        pushes.claim_push(topup.id)
    assert deliver(success_body("ws_CO_early", amount=50, receipt="EARLY00001")) == "orphan"
    with db.connection():
        early = pushes.record_push_accepted(topup.id, checkout_request_id="ws_CO_early",
                                            merchant_request_id=None, query_after_s=60)
        assert [settlement.apply_callback(seq) for seq in early] == ["credited"]
        assert TopUp.get(TopUp.id == topup.id).status == SUCCEEDED
        assert OrphanPayment.get().resolved_topup_id == topup.id
        assert Wallet.get(Wallet.account == account.id).balance_cents == 5_000


def test_a_different_amount_credits_what_mpesa_confirmed_and_flags_the_topup(pushed):
    deliver(success_body("ws_CO_1", amount=999))
    topup, balance, _ = state(pushed)
    assert balance == 99_900 and topup.credited_cents == 99_900
    assert "amount" in topup.flagged


def test_a_success_learnt_by_query_is_completed_by_the_later_callback_without_a_second_credit(pushed):
    with db.connection():
        assert settlement.settle_success("ws_CO_1", amount_cents=None, receipt=None, phone=None,
                                         source="query") == "credited"
    assert deliver(success_body("ws_CO_1")) == "receipt_filled"
    topup, balance, entries = state(pushed)
    assert topup.mpesa_receipt == "PE73OJNTHB" and (balance, entries) == (100_000, 1)
    with db.connection():
        assert LedgerEntry.get().mpesa_receipt == "PE73OJNTHB"


def test_an_unknown_topup_can_still_be_settled_by_a_late_callback(pushed):
    with db.connection():
        TopUp.update(status=UNKNOWN).where(TopUp.id == pushed["topup"]).execute()
    assert deliver(success_body("ws_CO_1")) == "credited"
    assert state(pushed)[0].status == SUCCEEDED


def test_a_receipt_already_credited_is_not_credited_again_under_another_checkout_request(pushed, database):
    deliver(success_body("ws_CO_1", receipt="SAMERCPT01"))
    with db.connection():
        second, _ = topups.create_topup(pushed["account"], amount=1000, phone="254712345678",
                                        reference=None, metadata={})
        pushes.claim_push(second.id)
        pushes.record_push_accepted(second.id, checkout_request_id="ws_CO_2",
                                    merchant_request_id=None, query_after_s=60)
    assert deliver(success_body("ws_CO_2", receipt="SAMERCPT01")) == "receipt_conflict"
    assert state(pushed)[1:] == (100_000, 1)


def test_a_malformed_callback_is_stored_and_marked(database):
    with db.connection():
        row, parsed = inbox.store_callback(b"{not json", "1.2.3.4")
        assert parsed is None
        stored = Callback.get(Callback.seq == row.seq)
    assert stored.body == "{not json" and stored.outcome == "malformed"
