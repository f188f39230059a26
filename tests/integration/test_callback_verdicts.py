"""What a paid callback may do, on SQLite and on PostgreSQL: one that cannot be applied is
quarantined once and does not hold back its top-up's STK Query; with confirm-by-query the
credit is what Daraja confirms, never a forger's amount or receipt."""
from __future__ import annotations

import datetime as dt
import json

import peewee
import pytest

from daraja.answers import StkQueryResult
from ledger import inbox, pushes, settlement, topups
from ledger.models import (
    PENDING, SUCCEEDED, Callback, LedgerEntry, TopUp, TopUpEvent, Wallet, utcnow,
)
from tests.unit.test_crediting import success_body
from workers import sweeps, tasks

pytestmark = pytest.mark.both_databases

PHONE = "254712345678"


class QueryAnswers:
    """Daraja's STK Query for these tests: every push answers ``result_code``."""

    def __init__(self, result_code="0"):
        self.result_code = result_code
        self.asked = []

    def stk_query(self, checkout_request_id):
        self.asked.append(checkout_request_id)
        return StkQueryResult(result_code=self.result_code, result_desc="", pending=False,
                              merchant_request_id="m", checkout_request_id=checkout_request_id,
                              raw={})


def pushed(account, checkout, amount=10) -> TopUp:
    topup, _ = topups.create_topup(account.id, amount=amount, phone=PHONE, reference=None,
                                   metadata={})
    pushes.claim_push(topup.id)
    pushes.record_push_accepted(topup.id, checkout_request_id=checkout,
                                merchant_request_id="m", query_after_s=60)
    return TopUp.get(TopUp.id == topup.id)


def stored(body: bytes) -> int:
    row, _ = inbox.store_callback(body, "127.0.0.1")
    return row.seq


def with_receipt(checkout, receipt, amount=10) -> bytes:
    body = json.loads(success_body(checkout, amount=amount))
    items = body["Body"]["stkCallback"]["CallbackMetadata"]["Item"]
    next(i for i in items if i["Name"] == "MpesaReceiptNumber")["Value"] = receipt
    return json.dumps(body).encode()


def balance(account):
    return Wallet.get(Wallet.account == account.id).balance_cents


def kinds(topup):
    return [e.kind for e in TopUpEvent.select().where(TopUpEvent.topup == topup.id)]


# --- a callback that cannot be applied ----------------------------------------------------------

@pytest.mark.parametrize("body", [
    success_body("ws_CO_Q", amount=10 ** 20),                 # beyond any column's range
    with_receipt("ws_CO_Q", "PE7\u00003OJNT"),                # a NUL in the receipt
], ids=["amount too large", "NUL in the receipt"])
def test_a_callback_that_cannot_be_applied_is_quarantined_once_and_the_query_settles_the_topup(
        ledger, body):
    topup = pushed(ledger, "ws_CO_Q")
    seq = stored(body)

    outcome = tasks.apply_callback(seq)

    assert outcome.startswith("quarantined:")
    callback = Callback.get(Callback.seq == seq)
    assert callback.applied_at is not None and callback.outcome == outcome
    assert "callback_quarantined" in kinds(topup)
    assert seq not in sweeps.unapplied_callbacks(after=dt.timedelta(0))
    assert balance(ledger) == 0

    daraja = QueryAnswers("0")
    assert tasks.query(topup.id, daraja, give_up_after_s=86_400) == "credited"
    assert daraja.asked == ["ws_CO_Q"]
    assert TopUp.get(TopUp.id == topup.id).status == SUCCEEDED
    assert balance(ledger) == 1_000


def test_a_callback_the_database_refuses_is_quarantined_not_retried(ledger, monkeypatch):
    topup = pushed(ledger, "ws_CO_DB")
    seq = stored(success_body("ws_CO_DB", amount=10))

    def refused(*args, **kwargs):
        raise peewee.DataError("value out of range")
    monkeypatch.setattr(settlement, "settle_success", refused)

    assert tasks.apply_callback(seq) == "quarantined:the database refused it: DataError"
    assert Callback.get(Callback.seq == seq).applied_at is not None
    assert TopUp.get(TopUp.id == topup.id).status == PENDING


def test_the_query_waits_only_for_a_callback_that_can_still_be_applied(ledger):
    topup = pushed(ledger, "ws_CO_W")
    stored(success_body("ws_CO_W", amount=10))          # stored, not applied yet

    with pytest.raises(tasks.AskAgainLater):
        tasks.query(topup.id, QueryAnswers("0"), give_up_after_s=86_400)

    Callback.update(received_at=utcnow() - tasks.CALLBACK_WAIT - dt.timedelta(seconds=1)).execute()
    assert tasks.query(topup.id, QueryAnswers("0"), give_up_after_s=86_400) == "credited"


# --- confirm-by-query ---------------------------------------------------------------------------

def test_a_forged_callback_confirmed_by_query_credits_only_the_amount_asked(ledger):
    topup = pushed(ledger, "ws_CO_F", amount=10)
    forged = stored(with_receipt("ws_CO_F", "FORGED0001", amount=250_000))

    outcome = tasks.apply_callback(forged, daraja=QueryAnswers("0"), confirm_by_query=True)

    assert outcome.startswith("refuted:")
    assert Callback.get(Callback.seq == forged).outcome == outcome
    credited = TopUp.get(TopUp.id == topup.id)
    assert (credited.status, credited.mpesa_receipt) == (SUCCEEDED, None)
    assert balance(ledger) == 1_000
    assert LedgerEntry.get(LedgerEntry.topup == topup.id).amount_cents == 1_000

    # the genuine callback is not blocked: it brings the receipt, and credits nothing more
    genuine = stored(with_receipt("ws_CO_F", "QGEN000001", amount=10))
    assert tasks.apply_callback(genuine, daraja=QueryAnswers("0"),
                                confirm_by_query=True) == "receipt_filled"
    assert TopUp.get(TopUp.id == topup.id).mpesa_receipt == "QGEN000001"
    assert balance(ledger) == 1_000


def test_a_confirmed_callback_of_the_amount_asked_credits_it_with_its_receipt(ledger):
    topup = pushed(ledger, "ws_CO_OK", amount=10)
    seq = stored(with_receipt("ws_CO_OK", "QGEN000002", amount=10))

    assert tasks.apply_callback(seq, daraja=QueryAnswers("0"), confirm_by_query=True) \
        == "credited"
    credited = TopUp.get(TopUp.id == topup.id)
    assert (credited.status, credited.mpesa_receipt, credited.flagged) == (
        SUCCEEDED, "QGEN000002", None)
    assert balance(ledger) == 1_000


def test_a_callback_daraja_contradicts_credits_nothing_and_is_kept(ledger):
    topup = pushed(ledger, "ws_CO_NO", amount=10)
    seq = stored(with_receipt("ws_CO_NO", "FORGED0002", amount=10))

    assert tasks.apply_callback(seq, daraja=QueryAnswers("1032"), confirm_by_query=True) \
        == "refuted:failed"
    assert TopUp.get(TopUp.id == topup.id).status == PENDING
    assert balance(ledger) == 0
    assert Callback.get(Callback.seq == seq).outcome == "refuted:failed"


# --- a verdict is final: applying the callback again changes nothing --------------------------

def test_a_refuted_callback_applied_again_credits_nothing(ledger):
    pushed(ledger, "ws_CO_R1", amount=10)
    forged = stored(with_receipt("ws_CO_R1", "FORGED0009", amount=250_000))
    cancelled = QueryAnswers("1032")
    assert tasks.apply_callback(forged, daraja=cancelled, confirm_by_query=True) \
        == "refuted:failed"

    # a redelivery, or the sweep's re-drive while the first message waited
    assert tasks.apply_callback(forged, daraja=cancelled, confirm_by_query=True) \
        == "refuted:failed"
    assert balance(ledger) == 0


def test_a_callback_contradicted_on_its_amount_never_fills_in_its_receipt(ledger):
    topup = pushed(ledger, "ws_CO_R2", amount=10)
    forged = stored(with_receipt("ws_CO_R2", "FORGED0010", amount=250_000))
    paid = QueryAnswers("0")
    first = tasks.apply_callback(forged, daraja=paid, confirm_by_query=True)
    assert first.startswith("refuted:")

    assert tasks.apply_callback(forged, daraja=paid, confirm_by_query=True) == first
    assert TopUp.get(TopUp.id == topup.id).mpesa_receipt is None
    genuine = stored(with_receipt("ws_CO_R2", "QGENUINE01", amount=10))
    assert tasks.apply_callback(genuine, daraja=paid, confirm_by_query=True) == "receipt_filled"
    assert balance(ledger) == 1_000


def test_a_confirmed_callback_kept_as_an_orphan_credits_only_the_amount_asked_once_its_push_answers(
        ledger):
    topup, _ = topups.create_topup(ledger.id, amount=10, phone=PHONE, reference=None,
                                   metadata={})
    claimed_at = utcnow()
    pushes.claim_push(topup.id, now=claimed_at)
    forged = stored(with_receipt("ws_CO_R3", "FORGED0011", amount=250_000))
    Callback.update(received_at=utcnow() - tasks.PUSH_ANSWER_WAIT - dt.timedelta(seconds=1)) \
        .execute()
    assert tasks.apply_callback(forged, daraja=QueryAnswers("0"), confirm_by_query=True) \
        == "orphan"   # the wait ran out before the push's answer

    early = tasks.record_push_outcome(topup.id, {
        "kind": "accepted", "checkout_request_id": "ws_CO_R3", "merchant_request_id": "m",
        "query_after_s": 60})
    assert early == [forged]
    assert tasks.apply_callback(forged, daraja=QueryAnswers("0"),
                                confirm_by_query=True).startswith("refuted:")
    assert balance(ledger) == 1_000
    assert TopUp.get(TopUp.id == topup.id).mpesa_receipt is None


def test_a_second_receipt_for_a_credited_topup_is_disputed_not_dropped(ledger):
    topup = pushed(ledger, "ws_CO_FR", amount=10)
    first = stored(with_receipt("ws_CO_FR", "FAKE000001", amount=10))
    assert tasks.apply_callback(first, daraja=QueryAnswers("0"), confirm_by_query=True) \
        == "credited"

    second = stored(with_receipt("ws_CO_FR", "QREAL00001", amount=10))
    assert tasks.apply_callback(second, daraja=QueryAnswers("0"), confirm_by_query=True) \
        == "receipt_disputed"
    row = TopUp.get(TopUp.id == topup.id)
    assert "FAKE000001" in row.flagged and "QREAL00001" in row.flagged
    assert "receipt_disputed" in kinds(topup)
    assert balance(ledger) == 1_000


def test_an_undocumented_code_from_the_confirming_query_is_asked_again_not_a_refutation(ledger):
    pushed(ledger, "ws_CO_UND", amount=10)
    seq = stored(with_receipt("ws_CO_UND", "QUND000001", amount=10))

    with pytest.raises(tasks.AskAgainLater):
        tasks.apply_callback(seq, daraja=QueryAnswers("7777"), confirm_by_query=True)
    assert Callback.get(Callback.seq == seq).applied_at is None
    assert tasks.apply_callback(seq, daraja=QueryAnswers("0"), confirm_by_query=True) \
        == "credited"


def test_a_nul_in_the_phone_of_a_callback_nobody_knows_is_quarantined_at_once(ledger):
    body = json.loads(success_body("ws_CO_NUL", amount=10))
    items = body["Body"]["stkCallback"]["CallbackMetadata"]["Item"]
    next(i for i in items if i["Name"] == "PhoneNumber")["Value"] = "2547\u00001234"
    seq = stored(json.dumps(body).encode())

    assert tasks.apply_callback(seq).startswith("quarantined:")
    assert Callback.get(Callback.seq == seq).applied_at is not None
