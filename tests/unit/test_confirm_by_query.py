"""DARAJA_CONFIRM_BY_QUERY=1: callbacks are not signed, so a success callback credits only
once STK Query confirms ResultCode 0 for its CheckoutRequestID."""
import pytest

from ledger import db, inbox
from ledger.models import FAILED, PENDING, SUCCEEDED, Callback, LedgerEntry, OrphanPayment, Wallet
from tests.unit.stk_support import kinds, new_topup, row, success_callback
from workers import tasks

pytestmark = pytest.mark.both_databases


def pushed(stk, account_id, phone) -> str:
    topup_id = new_topup(account_id, phone)
    with db.connection():
        assert tasks.push(topup_id, stk.daraja, query_after_s=60, redis=stk.redis)[0] == "sent"
    return topup_id


def deliver(stk, body: bytes) -> tuple[int, str]:
    with db.connection():
        stored, _ = inbox.store_callback(body, "196.201.214.200")
        return stored.seq, tasks.apply_callback(stored.seq, daraja=stk.daraja,
                                                confirm_by_query=True)


def nothing_credited(account_id):
    with db.connection():
        return (Wallet.get(Wallet.account == account_id).balance_cents == 0
                and LedgerEntry.select().count() == 0)


def test_a_forged_success_for_a_payment_daraja_says_failed_credits_nothing(
        stk, account_id, daraja_sim):
    # 254700001032: Daraja's transaction ended "cancelled by user"
    topup_id = pushed(stk, account_id, "254700001032")
    forged = success_callback(row(topup_id).checkout_request_id, amount=100, phone=254700001032)
    seq, outcome = deliver(stk, forged)
    assert outcome == "refuted:failed"
    assert nothing_credited(account_id)
    assert row(topup_id).status == PENDING and "callback_refuted_by_query" in kinds(topup_id)
    with db.connection():
        assert Callback.get(Callback.seq == seq).outcome == "refuted:failed"   # kept, applied
        # the top-up is settled by its own query, on Daraja's word
        assert tasks.query(topup_id, stk.daraja, give_up_after_s=3600, redis=stk.redis) == "failed"
    assert (row(topup_id).status, row(topup_id).failure_code) == (FAILED, "1032")


def test_a_forged_success_for_a_checkout_request_daraja_never_issued_credits_nothing(
        stk, account_id):
    pushed(stk, account_id, "254712345678")
    seq, outcome = deliver(stk, success_callback("ws_CO_28112026000000000000000001"))
    assert outcome == "refuted:unknown_to_daraja"
    assert nothing_credited(account_id)
    with db.connection():
        assert OrphanPayment.select().count() == 0   # not even kept as money received


def test_a_genuine_success_is_confirmed_by_query_and_credited_once(stk, account_id):
    topup_id = pushed(stk, account_id, "254712345678")
    body = success_callback(row(topup_id).checkout_request_id, receipt="GENUINE001")
    assert deliver(stk, body)[1] == "credited"
    assert deliver(stk, body)[1] == "duplicate"
    topup = row(topup_id)
    assert (topup.status, topup.mpesa_receipt) == (SUCCEEDED, "GENUINE001")
    with db.connection():
        assert Wallet.get(Wallet.account == account_id).balance_cents == 10_000


def test_a_success_callback_waits_while_daraja_is_still_processing(stk, account_id):
    # 254700010010: the query answers "4999 still under processing" five times
    topup_id = pushed(stk, account_id, "254700010010")
    body = success_callback(row(topup_id).checkout_request_id, phone=254700010010)
    with pytest.raises(tasks.AskAgainLater):
        deliver(stk, body)
    assert nothing_credited(account_id)
    with db.connection():
        # left unapplied: the actor's retry, or the sweep, applies it again later
        assert Callback.select().where(Callback.applied_at.is_null()).count() == 1
