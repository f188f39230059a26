"""``topupctl orphans assign`` / the console's assignment (``ledger/assignments.py``): an orphan
payment credited to an account once, recorded with who and why, on SQLite and PostgreSQL,
and of two assignments racing for one payment exactly one credits."""
from __future__ import annotations

import threading

import pytest

from ledger import accounts, assignments, db, history, inbox, pushes, settlement, topups
from ledger.models import (
    FAILED, SUCCEEDED, Event, LedgerEntry, OrphanAssignment, OrphanPayment, TopUp, Wallet,
)
from tests.unit.test_crediting import failure_body, success_body

pytestmark = pytest.mark.both_databases


def keep_orphan(checkout: str, receipt: str, amount: int = 750) -> None:
    """A paid callback for a CheckoutRequestID no top-up knows: kept as an orphan payment."""
    row, _ = inbox.store_callback(success_body(checkout, amount=amount, receipt=receipt),
                                  "127.0.0.1")
    assert settlement.apply_callback(row.seq) == "orphan"


def balance(account_id: str) -> int:
    return Wallet.get(Wallet.account == account_id).balance_cents


def test_an_orphan_payment_is_credited_to_the_account_named_once(ledger):
    keep_orphan("ws_CO_ORPHAN_1", "ORPH1ASSGN")
    done = assignments.assign("orph1assgn", ledger.id, reason="customer called, ticket 881",
                              assigned_by="topupctl (alice)")
    assert done.amount_cents == 75_000 and done.balance_after_cents == 75_000
    assert balance(ledger.id) == 75_000
    topup = TopUp.get(TopUp.id == done.topup_id)
    assert (topup.account_id, topup.status, topup.mpesa_receipt) == (
        ledger.id, SUCCEEDED, "ORPH1ASSGN")
    assert topup.flagged and "assigned by hand" in topup.flagged
    [entry] = LedgerEntry.select()
    assert (entry.mpesa_receipt, entry.amount_cents, entry.source) == (
        "ORPH1ASSGN", 75_000, "assignment")
    assert Event.get(Event.topup == topup.id).type == "wallet.top_up"
    orphan = OrphanPayment.get(OrphanPayment.mpesa_receipt == "ORPH1ASSGN")
    assert orphan.resolved_topup_id == topup.id and orphan.resolved_at is not None
    [record] = OrphanAssignment.select()
    assert (record.assigned_by, record.reason, record.account_id) == (
        "topupctl (alice)", "customer called, ticket 881", ledger.id)
    # the support look-up finds it by the receipt, with who and why in its history
    found = history.find("ORPH1ASSGN")
    kinds = [step.kind for step in history.history(found.topup)]
    assert found.topup.id == topup.id and "orphan_assigned" in kinds and "credited" in kinds


def test_assigning_it_again_or_to_a_second_account_is_refused_and_changes_nothing(ledger):
    second, _ = accounts.create_account("second")
    keep_orphan("ws_CO_ORPHAN_2", "ORPH2ASSGN")
    assignments.assign("ORPH2ASSGN", ledger.id, reason="first", assigned_by="t")
    for account_id in (ledger.id, second.id):
        with pytest.raises(assignments.AssignmentRefused, match="assigned already"):
            assignments.assign("ORPH2ASSGN", account_id, reason="again", assigned_by="t")
    assert balance(ledger.id) == 75_000 and balance(second.id) == 0
    assert LedgerEntry.select().count() == 1 and OrphanAssignment.select().count() == 1
    assert TopUp.select().count() == 1


@pytest.mark.parametrize("receipt, account, reason, refusal", [
    ("NOSUCHRCPT", None, "why", "no orphan payment"),
    ("ORPH3ASSGN", "acct_nobody", "why", "no account"),
    ("ORPH3ASSGN", None, "   ", "give a reason"),
])
def test_what_is_not_an_unassigned_orphan_for_an_account_is_refused(
        ledger, receipt, account, reason, refusal):
    keep_orphan("ws_CO_ORPHAN_3", "ORPH3ASSGN")
    with pytest.raises(assignments.AssignmentRefused, match=refusal):
        assignments.assign(receipt, account or ledger.id, reason=reason, assigned_by="t")
    assert balance(ledger.id) == 0 and TopUp.select().count() == 0
    assert OrphanPayment.get().resolved_topup_id is None


def test_a_payment_a_waiting_topup_will_settle_is_not_assigned_elsewhere(ledger):
    topup, _ = topups.create_topup(ledger.id, amount=750, phone="254712345678", reference=None,
                                   metadata={})
    keep_orphan("ws_CO_LATE_PUSH", "ORPH4ASSGN")
    # the push's answer names it after the callback was kept, but nothing settled it yet
    TopUp.update(checkout_request_id="ws_CO_LATE_PUSH").where(TopUp.id == topup.id).execute()
    with pytest.raises(assignments.AssignmentRefused, match="holds its CheckoutRequestID"):
        assignments.assign("ORPH4ASSGN", ledger.id, reason="why", assigned_by="t")
    assert balance(ledger.id) == 0


def test_money_paid_after_daraja_said_failed_can_be_assigned(ledger):
    topup, _ = topups.create_topup(ledger.id, amount=750, phone="254712345678", reference=None,
                                   metadata={})
    pushes.claim_push(topup.id)
    pushes.record_push_accepted(topup.id, checkout_request_id="ws_CO_FAILED_PAID",
                                merchant_request_id="m", query_after_s=60)
    failed, _ = inbox.store_callback(failure_body("ws_CO_FAILED_PAID"), "127.0.0.1")
    settlement.apply_callback(failed.seq)
    keep_orphan("ws_CO_FAILED_PAID", "ORPH5ASSGN")
    assert TopUp.get(TopUp.id == topup.id).status == FAILED

    done = assignments.assign("ORPH5ASSGN", ledger.id, reason="statement shows it paid",
                              assigned_by="t")
    assert balance(ledger.id) == 75_000
    assert TopUp.get(TopUp.id == topup.id).status == FAILED   # a failure is never rewritten
    assert done.topup_id != topup.id


def test_two_assignments_racing_for_one_payment_credit_once(ledger):
    second, _ = accounts.create_account("second")
    keep_orphan("ws_CO_RACE", "ORPH6RACE1")
    start = threading.Barrier(2)
    outcomes = {}

    def assign(account_id):
        with db.connection():
            start.wait()
            try:
                outcomes[account_id] = assignments.assign("ORPH6RACE1", account_id,
                                                          reason="race", assigned_by="t")
            except assignments.AssignmentRefused as exc:
                outcomes[account_id] = exc

    threads = [threading.Thread(target=assign, args=(a,)) for a in (ledger.id, second.id)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    refused = [o for o in outcomes.values() if isinstance(o, assignments.AssignmentRefused)]
    assert len(outcomes) == 2 and len(refused) == 1
    assert balance(ledger.id) + balance(second.id) == 75_000
    assert LedgerEntry.select().count() == 1 and OrphanAssignment.select().count() == 1
    assert TopUp.select().count() == 1
