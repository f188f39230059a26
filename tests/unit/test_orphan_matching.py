"""A push whose answer was lost never learns its CheckoutRequestID, so its callback arrives
as an orphan payment. When exactly one lost push fits it (same phone and amount, pushed before
it was paid), the payment credits that top-up once; anything less certain stays an orphan
for reconciliation against the statement."""
from __future__ import annotations

import datetime as dt

import pytest

from ledger import accounts, db, topups
from ledger.models import PENDING, SUCCEEDED, UNKNOWN, LedgerEntry, OrphanPayment, TopUp, Wallet

PHONE = "254712345678"


@pytest.fixture
def account(database):
    with db.connection():
        account, _ = accounts.create_account("acme")
        yield account


@pytest.fixture
def lost_push(account):
    """A top-up whose push went out and whose answer never came back."""
    def make(amount=250, phone=PHONE):
        topup, _ = topups.create_topup(account.id, amount=amount, phone=phone, reference=None,
                                       metadata={})
        assert topups.claim_push(topup.id) is not None
        assert topups.record_push_ambiguous(topup.id, reason="ReadTimeout") is None
        return topup
    return make


def pay(checkout_request_id, amount, receipt, phone=PHONE):
    return topups.settle_success(checkout_request_id, amount_cents=amount * 100,
                                 receipt=receipt, phone=phone, source="callback")


def balance(account):
    return Wallet.get(Wallet.account == account.id).balance_cents


def test_the_callback_of_a_lost_push_credits_its_topup_once(account, lost_push):
    topup = lost_push(250)

    assert pay("ws_CO_LOST1", 250, "QLS0000001") == "credited"
    assert pay("ws_CO_LOST1", 250, "QLS0000001") == "duplicate"   # the callback again

    settled = TopUp.get(TopUp.id == topup.id)
    assert (settled.status, settled.checkout_request_id, settled.mpesa_receipt) == (
        SUCCEEDED, "ws_CO_LOST1", "QLS0000001")
    assert "matched by phone and amount" in settled.flagged
    assert balance(account) == 25_000 and LedgerEntry.select().count() == 1
    assert OrphanPayment.select().count() == 0


def test_a_payment_that_came_before_the_push_was_given_up_on_is_matched_then(account):
    topup, _ = topups.create_topup(account.id, amount=250, phone=PHONE, reference=None,
                                   metadata={})
    topups.claim_push(topup.id)
    # the callback beats the push's timed-out answer: nobody knows its CheckoutRequestID yet
    assert pay("ws_CO_EARLY", 250, "QLS0000002") == "orphan"
    assert TopUp.get(TopUp.id == topup.id).status == PENDING

    assert topups.record_push_ambiguous(topup.id, reason="ReadTimeout") == "credited"

    settled = TopUp.get(TopUp.id == topup.id)
    assert (settled.status, settled.mpesa_receipt) == (SUCCEEDED, "QLS0000002")
    assert OrphanPayment.get(OrphanPayment.checkout_request_id == "ws_CO_EARLY") \
        .resolved_topup_id == topup.id
    assert balance(account) == 25_000


def test_an_unknown_topup_is_still_matched_by_its_late_payment(account, lost_push):
    topup = lost_push(250)
    assert topups.give_up(topup.id, 60, now=topup.created_at + dt.timedelta(minutes=5)) == UNKNOWN

    assert pay("ws_CO_LATE", 250, "QLS0000003") == "credited"
    assert TopUp.get(TopUp.id == topup.id).status == SUCCEEDED


@pytest.mark.parametrize("amount, phone", [(300, PHONE), (250, "254712999999")])
def test_a_payment_of_another_amount_or_phone_stays_an_orphan(account, lost_push, amount, phone):
    topup = lost_push(250)

    assert pay("ws_CO_OTHER", amount, "QLS0000004", phone=phone) == "orphan"

    assert TopUp.get(TopUp.id == topup.id).checkout_request_id is None
    assert balance(account) == 0


def test_two_lost_pushes_that_fit_one_payment_leave_it_to_the_statement(account, lost_push):
    first, second = lost_push(250), lost_push(250)

    assert pay("ws_CO_TWOFIT", 250, "QLS0000005") == "orphan"

    assert {TopUp.get(TopUp.id == t.id).checkout_request_id for t in (first, second)} == {None}
    assert balance(account) == 0


def test_two_payments_that_fit_one_lost_push_leave_it_to_the_statement(account):
    topup, _ = topups.create_topup(account.id, amount=250, phone=PHONE, reference=None,
                                   metadata={})
    topups.claim_push(topup.id)
    assert pay("ws_CO_PAIDA", 250, "QLS0000006") == "orphan"
    assert pay("ws_CO_PAIDB", 250, "QLS0000007") == "orphan"

    assert topups.record_push_ambiguous(topup.id, reason="ReadTimeout") is None
    assert TopUp.get(TopUp.id == topup.id).status == PENDING
    assert balance(account) == 0


def test_a_second_payment_for_an_already_matched_push_stays_an_orphan(account, lost_push):
    lost_push(250)
    assert pay("ws_CO_FIRST", 250, "QLS0000008") == "credited"

    assert pay("ws_CO_SECOND", 250, "QLS0000009") == "orphan"
    assert balance(account) == 25_000
