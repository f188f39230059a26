"""A top-up's STK push: claimed once, then what Daraja answered, written down.

Every change is a conditional UPDATE that acts only if the push is still where the caller
left it, so a message delivered twice, or two workers on one message, send one prompt and
record one answer.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import peewee as pw

from ledger import events, prebuilt, settlement
from ledger.db import write_transaction
from ledger.models import (
    FAILED, PENDING, PUSH_AMBIGUOUS, PUSH_QUEUED, PUSH_REFUSED, PUSH_SENDING, PUSH_SENT,
    Callback, TopUp, utcnow,
)
from ledger.prebuilt import param
from ledger.topups import record_event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedPush:
    """What sending a claimed push needs, as the claim left the row."""
    id: str
    amount: int
    phone: str
    reference: str
    push_attempts: int


# The push's statements (ledger.prebuilt: Peewee writes their SQL once).
STATE = prebuilt.Statement(
    TopUp.select(TopUp.status, TopUp.push_state, TopUp.phone)
    .where(TopUp.id == param(TopUp.id)).limit(1))
# One conditional UPDATE, committed by itself (no transaction around it), that hands back the
# claimed row with its commit (read after the commit, a database lost in between would leave
# the push claimed, `sending`, with nothing sent).
CLAIM = prebuilt.Statement(
    TopUp.update(push_state=PUSH_SENDING, push_attempts=TopUp.push_attempts + 1,
                 push_started_at=param(TopUp.push_started_at),
                 updated_at=param(TopUp.updated_at))
    .where((TopUp.id == param(TopUp.id)) & (TopUp.push_state == PUSH_QUEUED)
           & (TopUp.status == PENDING))
    .returning(TopUp.amount, TopUp.phone, TopUp.reference, TopUp.push_attempts))
# Whatever happened meanwhile (a sweep that took the push for abandoned), Daraja's
# CheckoutRequestID is recorded: without it the callback could only be an orphan.
ACCEPTED = prebuilt.Statement(
    TopUp.update(push_state=PUSH_SENT, checkout_request_id=param(TopUp.checkout_request_id),
                 merchant_request_id=param(TopUp.merchant_request_id),
                 pushed_at=param(TopUp.pushed_at), updated_at=param(TopUp.updated_at),
                 next_query_at=param(TopUp.next_query_at))
    .where((TopUp.id == param(TopUp.id)) & TopUp.checkout_request_id.is_null()))
CALLBACKS_FOR = prebuilt.Statement(
    Callback.select(Callback.seq)
    .where(Callback.checkout_request_id == param(Callback.checkout_request_id)))


def push_state(topup_id: str) -> tuple[str, str, str] | None:
    """``(status, push_state, phone)`` of a top-up, or None if there is no such top-up."""
    return STATE.first(id=topup_id)


def claim_push(topup_id: str, *, now: dt.datetime | None = None) -> ClaimedPush | None:
    """Take the right to send this top-up's STK push, or None if it is not to be sent.

    Only a QUEUED push can be claimed, so a message delivered twice, or two workers on the
    same message, send at most one prompt. ``now`` is written as the claim's
    ``push_started_at``: the caller that keeps it can put back a claim whose answer it lost
    (:func:`unclaim_push`).
    """
    now = now or utcnow()
    row = CLAIM.first(id=topup_id, push_started_at=now, updated_at=now)
    return None if row is None else ClaimedPush(topup_id, *row)


def _this_claim(topup_id: str, claimed_at: dt.datetime | None):
    """The top-up while its push is still this claimer's to settle: ``sending``; or, for the
    claimer that names its claim's timestamp, also ``ambiguous`` with no CheckoutRequestID,
    since the sweep takes a claim held up by a long database outage for a push abandoned
    mid-send, and this claimer knows what became of it."""
    ours = TopUp.push_state == PUSH_SENDING
    if claimed_at is not None:
        ours |= ((TopUp.push_state == PUSH_AMBIGUOUS) & TopUp.checkout_request_id.is_null()
                 & (TopUp.push_started_at == claimed_at))
    return (TopUp.id == topup_id) & (TopUp.status == PENDING) & ours


def unclaim_push(topup_id: str, claimed_at: dt.datetime) -> bool:
    """Put back the claim made at ``claimed_at`` if it is in: the claimer lost the claim's
    answer (the database died as it committed) and so certainly sent nothing."""
    with write_transaction():
        undone = (TopUp.update(push_state=PUSH_QUEUED, updated_at=utcnow())
                  .where(_this_claim(topup_id, claimed_at)
                         & (TopUp.push_started_at == claimed_at)).execute())
        if undone:
            record_event(topup_id, "push_not_sent", reason="claim's answer lost")
    return bool(undone)


def release_push(topup_id: str, reason: str, *, claimed_at: dt.datetime | None = None,
                 **detail) -> None:
    """The push certainly did not reach Daraja: put it back so a retry may claim it."""
    with write_transaction():
        (TopUp.update(push_state=PUSH_QUEUED, updated_at=utcnow())
         .where(_this_claim(topup_id, claimed_at)).execute())
        record_event(topup_id, "push_not_sent", reason=reason, **detail)


def record_push_accepted(topup_id: str, *, checkout_request_id: str,
                         merchant_request_id: str | None, query_after_s: int) -> list[int]:
    """Daraja accepted the push (not paid!). Returns the callbacks that arrived first.

    A callback can beat the push's answer; it was stored with its CheckoutRequestID and
    found no top-up. The caller re-applies the returned callbacks after this commit.

    An answer whose CheckoutRequestID another top-up holds already (a payment matched to it
    by phone and amount), or that comes after another payment was matched to this one, is
    never dead-lettered: both top-ups are flagged for an operator (``_answer_conflicts``).
    """
    now = utcnow()
    try:
        with write_transaction():
            recorded = ACCEPTED.rowcount(
                id=topup_id, checkout_request_id=checkout_request_id,
                merchant_request_id=merchant_request_id, pushed_at=now, updated_at=now,
                next_query_at=now + dt.timedelta(seconds=query_after_s))
            record_event(topup_id, "push_accepted", checkout_request_id=checkout_request_id,
                         merchant_request_id=merchant_request_id)
    except pw.IntegrityError:   # the unique index: another top-up holds this CheckoutRequestID
        recorded = 0
    if not recorded:
        holder = TopUp.get_or_none(TopUp.checkout_request_id == checkout_request_id)
        if holder is None or holder.id != topup_id:
            _answer_conflicts(topup_id, checkout_request_id, holder)
            return []
    # Read after the commit, never in the same transaction: a callback committed meanwhile
    # is not in its snapshot, and may have found no top-up.
    return [seq for seq, in CALLBACKS_FOR.rows(checkout_request_id=checkout_request_id)]


def _answer_conflicts(topup_id: str, checkout_request_id: str, holder: TopUp | None) -> None:
    """The push's own answer contradicts a match made by phone and amount: the payment went
    to the wrong top-up, or this one was credited with a payment not its own. Money may have
    to move between wallets, which only a person may decide: both are flagged, neither is
    changed otherwise, and this push is never queried (its CheckoutRequestID cannot be kept)."""
    if holder is not None:
        reason = f"push answered {checkout_request_id}, which {holder.id} holds"
    else:
        reason = f"push answered {checkout_request_id} after another payment was matched to it"
    now = utcnow()
    with write_transaction():
        (TopUp.update(push_state=PUSH_SENT, flagged=reason[:200], updated_at=now,
                      next_query_at=None)
         .where(TopUp.id == topup_id).execute())
        record_event(topup_id, "push_answer_conflict", checkout_request_id=checkout_request_id,
                     held_by=holder.id if holder else None)
        if holder is not None:
            (TopUp.update(flagged=f"its payment may be {topup_id}'s"[:200], updated_at=now)
             .where(TopUp.id == holder.id).execute())
            record_event(holder.id, "push_answer_conflict",
                         checkout_request_id=checkout_request_id, answered_push_of=topup_id)
    log.error("a push's answer contradicts a payment matched by phone and amount",
              extra={"topup_id": topup_id, "checkout_request_id": checkout_request_id,
                     "held_by": holder.id if holder else None})


def record_push_refused(topup_id: str, *, error_code: str | None, error_message: str | None,
                        claimed_at: dt.datetime | None = None) -> bool:
    """Daraja refused the push outright: nothing was sent, no money can move."""
    now = utcnow()
    with events.publishing(), write_transaction():
        changed = (TopUp.update(status=FAILED, push_state=PUSH_REFUSED,
                                failure_code=(error_code or "refused")[:32],
                                failure_reason=(error_message or "")[:255],
                                completed_at=now, updated_at=now)
                   .where(_this_claim(topup_id, claimed_at))
                   .execute())
        record_event(topup_id, "push_refused", error_code=error_code, error_message=error_message)
        if changed:
            events.topup_failed(TopUp.get(TopUp.id == topup_id))
    return changed == 1


def record_push_ambiguous(topup_id: str, reason: str) -> None:
    """The push may have reached Daraja: never send it again; its callback settles it.

    Without the push's answer we never learnt its CheckoutRequestID, so its callback finds
    no top-up and is kept as an orphan payment: the payments from this phone that wait
    unclaimed are tried against the matching rule again now (``ledger.orphans``).
    """
    with write_transaction():
        changed = (TopUp.update(push_state=PUSH_AMBIGUOUS, updated_at=utcnow())
                   .where((TopUp.id == topup_id) & (TopUp.push_state == PUSH_SENDING))
                   .execute())
        if changed:
            record_event(topup_id, "push_ambiguous", reason=reason)
    # every time, not only when this call changed the row: a first try that failed half-way
    # is done again by the message's retry (it is idempotent)
    settlement.retry_orphans(TopUp.select(TopUp.phone).where(TopUp.id == topup_id).scalar())
