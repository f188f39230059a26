"""One M-Pesa receipt credits once, whichever road it takes: an STK callback, a C2B confirmation
that names the push by its AccountReference, a Pull Transactions row, in any order and any
number of times; the later ones attach to the credit already made."""
import pytest

from ledger import accounts, c2b, db, inbox, pushes, settlement, topups
from ledger.models import (
    FAILED, PENDING, SUCCEEDED, UNKNOWN, LedgerEntry, OrphanPayment, TopUp, TopUpEvent, Wallet,
)
from tests.unit.test_crediting import success_body

pytestmark = pytest.mark.both_databases

RECEIPT = "RKL51ZDR4F"


@pytest.fixture
def acme(database):
    with db.connection():
        return accounts.create_account("acme")[0]


def push(account_id, *, reference="INV42", amount=1000, checkout="ws_CO_1",
         answered=True) -> str:
    """An STK top-up whose push left; its answer (the CheckoutRequestID) recorded or not."""
    with db.connection():
        topup, _ = topups.create_topup(account_id, amount=amount, phone="254712345678",
                                       reference=reference, metadata={})
        pushes.claim_push(topup.id)
        if answered:
            pushes.record_push_accepted(topup.id, checkout_request_id=checkout,
                                        merchant_request_id="m", query_after_s=60)
    return topup.id


def payment(bill_ref="INV42", amount_cents=100_000, receipt=RECEIPT, phone="2547 ***** 678"):
    return c2b.Payment(receipt=receipt, amount_cents=amount_cents, bill_ref=bill_ref,
                       phone=phone, paid_at=None)


def c2b_report(bill_ref="INV42", **kw) -> str:
    with db.connection():
        return c2b.settle(payment(bill_ref, **kw), source=c2b.CONFIRMATION).outcome


def stk_callback(checkout="ws_CO_1", receipt=RECEIPT, amount=1000) -> str:
    with db.connection():
        row, _ = inbox.store_callback(success_body(checkout, amount=amount, receipt=receipt),
                                      "127.0.0.1")
        return settlement.apply_callback(row.seq)


def state(account_id, topup_id=None):
    with db.connection():
        topup = TopUp.get(TopUp.id == topup_id) if topup_id else None
        return (topup, Wallet.get(Wallet.account == account_id).balance_cents,
                LedgerEntry.select().where(LedgerEntry.mpesa_receipt == RECEIPT).count())


def kinds(topup_id):
    with db.connection():
        return [e.kind for e in TopUpEvent.select().where(TopUpEvent.topup == topup_id)
                .order_by(TopUpEvent.seq)]


def test_the_stk_callback_first_then_its_c2b_report_attaches(acme):
    topup_id = push(acme.id)
    assert stk_callback() == "credited"
    assert c2b_report() == "duplicate"
    topup, balance, credits = state(acme.id, topup_id)
    assert (topup.status, topup.mpesa_receipt, balance, credits) == (SUCCEEDED, RECEIPT,
                                                                     100_000, 1)
    assert kinds(topup_id)[-2:] == ["credited", "duplicate_success"]


def test_the_c2b_report_first_settles_the_push_and_the_callback_attaches(acme):
    topup_id = push(acme.id)
    assert c2b_report() == "credited"
    assert stk_callback() == "duplicate"
    topup, balance, credits = state(acme.id, topup_id)
    assert (topup.status, topup.mpesa_receipt, topup.channel, balance, credits) == (
        SUCCEEDED, RECEIPT, "stk_push", 100_000, 1)
    assert {"credited", "paid_by_reference", "duplicate_success"} <= set(kinds(topup_id))


def test_a_c2b_report_before_the_push_was_answered_and_the_callback_after_it(acme):
    topup_id = push(acme.id, answered=False)
    assert c2b_report() == "credited"
    # the callback finds no top-up for its CheckoutRequestID: not an orphan, the same payment
    assert stk_callback(checkout="ws_CO_late") == "duplicate"
    with db.connection():
        assert pushes.record_push_accepted(topup_id, checkout_request_id="ws_CO_late",
                                           merchant_request_id="m", query_after_s=60)
    assert stk_callback(checkout="ws_CO_late") == "duplicate"
    topup, balance, credits = state(acme.id, topup_id)
    assert (topup.status, balance, credits) == (SUCCEEDED, 100_000, 1)
    with db.connection():
        assert OrphanPayment.select().count() == 0


def test_a_credit_on_stk_querys_word_gets_its_receipt_from_the_c2b_report(acme):
    topup_id = push(acme.id)
    with db.connection():
        assert settlement.settle_success("ws_CO_1", amount_cents=None, receipt=None, phone=None,
                                         source="query") == "credited"
    assert c2b_report() == "receipt_filled"
    assert stk_callback() == "duplicate"
    topup, balance, credits = state(acme.id, topup_id)
    assert (topup.mpesa_receipt, balance, credits) == (RECEIPT, 100_000, 1)


def test_an_unknown_push_is_settled_by_its_c2b_report(acme):
    topup_id = push(acme.id)
    with db.connection():   # given up: no final word from Daraja within the day
        TopUp.update(status=UNKNOWN).where(TopUp.id == topup_id).execute()
    assert c2b_report() == "credited"
    assert state(acme.id, topup_id)[0].status == SUCCEEDED


def test_a_failed_push_is_not_settled_by_a_c2b_report_of_its_reference(acme):
    topup_id = push(acme.id)
    with db.connection():
        settlement.settle_failure("ws_CO_1", "1032", "Request cancelled by user",
                                  source="callback")
    assert c2b_report() == "orphan"
    topup, balance, credits = state(acme.id, topup_id)
    assert (topup.status, balance, credits) == (FAILED, 0, 0)


def test_a_report_of_another_amount_is_not_that_pushs_payment(acme):
    push(acme.id)
    assert c2b_report(amount_cents=50_000) == "orphan"


def test_two_pushes_with_the_reference_and_the_amount_leave_it_to_an_operator(acme):
    first = push(acme.id, checkout="ws_CO_1")
    second = push(acme.id, checkout="ws_CO_2")
    assert c2b_report() == "orphan"
    [orphan] = list(OrphanPayment.select())
    assert orphan.reason == "more than one top-up has this reference and amount"
    assert [state(acme.id, t)[0].status for t in (first, second)] == [PENDING, PENDING]
    # the push's own callback settles it after all, and the orphan with it
    assert stk_callback(checkout="ws_CO_2") == "credited"
    with db.connection():
        assert OrphanPayment.get().resolved_topup_id == second


def test_a_reference_that_is_also_the_same_accounts_number_settles_the_push(acme):
    topup_id = push(acme.id, reference=acme.account_number)
    assert c2b_report(acme.account_number) == "credited"
    topup, balance, _ = state(acme.id, topup_id)
    assert topup.status == SUCCEEDED and balance == 100_000
    with db.connection():
        assert TopUp.select().where(TopUp.channel == "c2b").count() == 0


def test_a_reference_that_is_another_accounts_number_is_left_to_an_operator(acme):
    with db.connection():
        other = accounts.create_account("other")[0]
    push(acme.id, reference=other.account_number)
    assert c2b_report(other.account_number) == "orphan"
    assert state(acme.id)[1] == 0 and state(other.id)[1] == 0


def test_a_paybill_orphan_is_resolved_when_its_receipt_is_credited_by_another_road(acme):
    topup_id = push(acme.id, reference="INV43")
    assert c2b_report("INV99") == "orphan"            # a reference nobody has
    assert stk_callback() == "credited"
    with db.connection():
        assert OrphanPayment.get().resolved_topup_id == topup_id


def test_the_sweep_resolves_an_orphan_kept_while_its_receipt_was_being_credited(acme):
    topup_id = push(acme.id)
    assert stk_callback() == "credited"
    with db.connection():   # as a report that saw no credit and kept the orphan just after
        OrphanPayment.insert(mpesa_receipt=RECEIPT, amount_cents=100_000,
                             bill_ref_number="INV42").execute()
        from ledger import orphans
        assert orphans.resolve_credited() == 1
        assert OrphanPayment.get().resolved_topup_id == topup_id
        assert orphans.resolve_credited() == 0


def test_a_c2b_credit_then_the_same_receipt_as_a_pull_row_credits_nothing_more(acme):
    assert c2b_report(acme.account_number) == "credited"
    with db.connection():
        assert c2b.known_receipts([RECEIPT, "OTHER00001"]) == {RECEIPT}
        pulled = c2b.settle(payment(acme.account_number), source=c2b.PULL)
    assert pulled.outcome == "duplicate"
    assert state(acme.id)[1:] == (100_000, 1)


def test_the_same_receipt_for_two_accounts_credits_the_first_only(acme):
    with db.connection():
        other = accounts.create_account("other")[0]
    assert c2b_report(acme.account_number) == "credited"
    assert c2b_report(other.account_number) == "duplicate"
    assert state(acme.id)[1] == 100_000 and state(other.id)[1] == 0
