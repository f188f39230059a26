"""Orphan payments a person credits to an account (``topupctl orphans assign``, the console).

An orphan payment is money M-Pesa confirmed that no top-up claims (``ledger.orphans``). When a
person knows whose it is (the customer called, the statement names the account), :func:`assign`
credits it to that account, once:

- it is found by its M-Pesa receipt, which every kind of orphan payment carries;
- a top-up is written for it (no STK push: ``push_state`` ``none``, ``flagged``) and credited
  through the one credit path, ``ledger.settlement.credit_topup``, so the wallet, the ledger
  entry, the ``wallet.top_up`` event and its webhooks are what any credit makes;
- the orphan is marked resolved by that top-up with a conditional UPDATE, and the assignment
  (who, when, why) is written behind a unique index on the receipt, in the same transaction.

A receipt that is no orphan payment, one already resolved (matched, credited, or assigned
before), or one whose CheckoutRequestID a top-up still waiting for it holds, is refused with
:class:`AssignmentRefused`, and nothing changes. Of two assignments racing for one payment,
one credits and the other is refused: the conditional UPDATE and the unique indexes on the
receipt (``orphan_assignment``, ``ledger_entry``, ``top_up``) decide it, not a read.
"""
from __future__ import annotations

from dataclasses import dataclass

import peewee as pw

from ledger import events, settlement
from ledger.db import write_transaction
from ledger.ids import new_id, short_reference
from ledger.models import (
    C2B, FAILED, PUSH_NONE, STK_PUSH, SUCCEEDED, Account, OrphanAssignment, OrphanPayment, TopUp,
    Wallet, utcnow,
)
from ledger.phones import mask
from ledger.topups import record_event

MAX_REASON = 500
SOURCE = "assignment"


class AssignmentRefused(Exception):
    """Nothing was credited (raised inside the transaction, it rolls back whatever was
    written); ``str()`` says why, for the person who asked."""


@dataclass(frozen=True)
class Assigned:
    receipt: str
    account_id: str
    topup_id: str
    amount_cents: int
    balance_after_cents: int
    assigned_by: str
    reason: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def assign(receipt: str, account_id: str, *, reason: str, assigned_by: str) -> Assigned:
    """Credit the unassigned orphan payment with this receipt to ``account_id``, once."""
    receipt = (receipt or "").strip().upper()
    account_id = (account_id or "").strip()
    reason = " ".join((reason or "").split())
    if not reason:
        raise AssignmentRefused("give a reason: it is kept with the assignment")
    if len(reason) > MAX_REASON:
        raise AssignmentRefused(f"the reason is longer than {MAX_REASON} characters")
    try:
        with events.publishing(), write_transaction():
            return _assign(receipt, account_id, reason, assigned_by[:100])
    except pw.IntegrityError:
        # a racing assignment, or a credit of the same receipt, committed first
        raise AssignmentRefused(f"{receipt} was credited meanwhile; nothing was changed") from None


def _assign(receipt: str, account_id: str, reason: str, assigned_by: str) -> Assigned:
    orphan = OrphanPayment.get_or_none(OrphanPayment.mpesa_receipt == receipt) if receipt else None
    if orphan is None:
        raise AssignmentRefused(f"no orphan payment has the receipt {receipt or '(none)'}")
    if Account.get_or_none(Account.id == account_id) is None:
        raise AssignmentRefused(f"no account {account_id or '(none)'}")
    if orphan.resolved_topup_id is not None:
        raise AssignmentRefused(_already(orphan))
    # a paybill payment (C2B) kept as an orphan has no CheckoutRequestID: no top-up holds it
    holder = (TopUp.get_or_none(TopUp.checkout_request_id == orphan.checkout_request_id)
              if orphan.checkout_request_id is not None else None)
    if holder is not None and holder.status != FAILED:
        raise AssignmentRefused(f"top-up {holder.id} ({holder.status}) holds its "
                                "CheckoutRequestID: it is settled there, not assigned")
    if not orphan.amount_cents or orphan.amount_cents <= 0:
        raise AssignmentRefused(f"the orphan payment {receipt} has no amount to credit")

    now = utcnow()
    topup_id = new_id("tu")
    topup = TopUp.create(id=topup_id, account=account_id, amount=orphan.amount_cents // 100,
                         phone=orphan.phone or "", reference=short_reference(topup_id),
                         push_state=PUSH_NONE, created_at=now, updated_at=now,
                         # how the money came: a paybill orphan has no CheckoutRequestID
                         channel=STK_PUSH if orphan.checkout_request_id else C2B)
    claimed = (OrphanPayment.update(resolved_topup=topup.id, resolved_at=now)
               .where((OrphanPayment.seq == orphan.seq)
                      & OrphanPayment.resolved_topup.is_null()).execute())
    if not claimed:
        raise AssignmentRefused(_already(OrphanPayment.get(OrphanPayment.seq == orphan.seq)))
    record_event(topup.id, "orphan_assigned", receipt=receipt,
                 checkout_request_id=orphan.checkout_request_id, amount_cents=orphan.amount_cents,
                 phone=mask(orphan.phone), assigned_by=assigned_by, reason=reason)
    outcome = settlement.credit_topup(topup.id, amount_cents=orphan.amount_cents, receipt=receipt,
                                      phone=orphan.phone, source=SOURCE)
    if outcome != "credited":
        raise AssignmentRefused(f"crediting it gave {outcome!r}; nothing was changed")
    TopUp.update(flagged=f"orphan payment {receipt} assigned by hand"[:200]).where(
        TopUp.id == topup.id).execute()
    OrphanAssignment.create(mpesa_receipt=receipt, account=account_id, topup=topup.id,
                            amount_cents=orphan.amount_cents, assigned_by=assigned_by,
                            reason=reason, assigned_at=now)
    balance = Wallet.select(Wallet.balance_cents).where(Wallet.account == account_id).scalar()
    return Assigned(receipt=receipt, account_id=account_id, topup_id=topup.id,
                    amount_cents=orphan.amount_cents, balance_after_cents=balance,
                    assigned_by=assigned_by, reason=reason)


def _already(orphan: OrphanPayment) -> str:
    assignment = OrphanAssignment.get_or_none(
        OrphanAssignment.mpesa_receipt == orphan.mpesa_receipt)
    if assignment is not None:
        return (f"{orphan.mpesa_receipt} was assigned already, to {assignment.account_id} "
                f"(top-up {assignment.topup_id}) by {assignment.assigned_by}")
    topup = TopUp.get_or_none(TopUp.id == orphan.resolved_topup_id)
    status = f", {topup.status}" if topup is not None and topup.status != SUCCEEDED else ""
    return (f"{orphan.mpesa_receipt} is not an orphan any more: top-up "
            f"{orphan.resolved_topup_id}{status} claims it")


def assignments(limit: int = 100) -> list[OrphanAssignment]:
    """The latest assignments, newest first."""
    return list(OrphanAssignment.select().order_by(OrphanAssignment.seq.desc()).limit(limit))
