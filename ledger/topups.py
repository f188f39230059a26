"""Top-ups: recording a request, the push's fate, and settling it exactly once.

Every state change is a conditional UPDATE (``… WHERE status IN (…)``) that acts only if one
row changed, and every credit writes the ledger entry, the wallet balance and the top-up's
status in one transaction behind unique indexes. That holds at READ COMMITTED on PostgreSQL
and under SQLite's single writer, with any number of workers racing on the same callback.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass

import peewee as pw

from ledger import events, orphan_matching, result_codes
from ledger.callbacks import MalformedCallback, parse, why_unappliable
from ledger.db import write_transaction
from ledger.ids import new_id, short_reference
from ledger.inbox import store_callback  # noqa: F401  (re-exported: callers say topups.)
from ledger.models import (
    FAILED, PENDING, PUSH_AMBIGUOUS, PUSH_QUEUED, PUSH_REFUSED, PUSH_SENDING, PUSH_SENT,
    SUCCEEDED, UNKNOWN, Callback, LedgerEntry, OrphanPayment, TopUp, TopUpEvent, Wallet, utcnow,
)
from ledger.phones import mask

log = logging.getLogger(__name__)

SETTLEABLE = (PENDING, UNKNOWN)


class IdempotencyConflict(Exception):
    """The idempotency key was used before with another request body."""


def fingerprint(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def record_event(topup_id, kind: str, **detail) -> None:
    TopUpEvent.create(topup=topup_id, kind=kind, detail=json.dumps(detail, default=str))


# --- the request ---------------------------------------------------------------------------

def create_topup(account_id: str, *, amount: int, phone: str, reference: str | None,
                 metadata: dict, idempotency_key: str | None = None,
                 request_fingerprint: str | None = None) -> tuple[TopUp, bool]:
    """Record a top-up request; ``(topup, created)``.

    With an idempotency key, the same key and body give back the first top-up
    (``created`` False); the same key with another body raises IdempotencyConflict.
    """
    topup_id = new_id("tu")
    try:
        # the unique index on (account, idempotency key) decides a race of two requests
        with write_transaction():
            topup = TopUp.create(id=topup_id, account=account_id, amount=amount, phone=phone,
                                 reference=reference or short_reference(topup_id),
                                 metadata=json.dumps(metadata, sort_keys=True),
                                 idempotency_key=idempotency_key,
                                 request_fingerprint=request_fingerprint)
            record_event(topup_id, "requested", amount=amount, phone=mask(phone),
                         reference=topup.reference)
        return topup, True
    except pw.IntegrityError:
        if idempotency_key is None:
            raise
    existing = TopUp.get_or_none((TopUp.account == account_id)
                                 & (TopUp.idempotency_key == idempotency_key))
    if existing is None:  # the row that collided was rolled back meanwhile: try once more
        return create_topup(account_id, amount=amount, phone=phone, reference=reference,
                            metadata=metadata, idempotency_key=idempotency_key,
                            request_fingerprint=request_fingerprint)
    if existing.request_fingerprint != request_fingerprint:
        raise IdempotencyConflict(existing.id)
    return existing, False


# --- the push --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClaimedPush:
    """What sending a claimed push needs, as the claim left the row."""
    id: str
    amount: int
    phone: str
    reference: str
    push_attempts: int


def push_state(topup_id: str) -> tuple[str, str, str] | None:
    """``(status, push_state, phone)`` of a top-up, or None if there is no such top-up."""
    return (TopUp.select(TopUp.status, TopUp.push_state, TopUp.phone)
            .where(TopUp.id == topup_id).tuples().first())


def claim_push(topup_id: str, *, now: dt.datetime | None = None) -> ClaimedPush | None:
    """Take the right to send this top-up's STK push, or None if it is not to be sent.

    Only a QUEUED push can be claimed, so a message delivered twice, or two workers on the
    same message, send at most one prompt. ``now`` is written as the claim's
    ``push_started_at``: the caller that keeps it can put back a claim whose answer it lost
    (:func:`unclaim_push`).
    """
    now = now or utcnow()
    # One conditional UPDATE that hands back the claimed row with its commit (read after
    # the commit, a database lost in between would leave the push claimed, `sending`, with
    # nothing sent).
    with write_transaction():
        rows = list(TopUp.update(push_state=PUSH_SENDING, push_attempts=TopUp.push_attempts + 1,
                                 push_started_at=now, updated_at=now)
                    .where((TopUp.id == topup_id) & (TopUp.push_state == PUSH_QUEUED)
                           & (TopUp.status == PENDING))
                    .returning(TopUp.amount, TopUp.phone, TopUp.reference, TopUp.push_attempts)
                    .execute())
    if not rows:
        return None
    row = rows[0]
    return ClaimedPush(topup_id, row.amount, row.phone, row.reference, row.push_attempts)


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
        # Whatever happened meanwhile (a sweep that took the push for abandoned), Daraja's
        # CheckoutRequestID is recorded: without it the callback could only be an orphan.
        with write_transaction():
            recorded = (TopUp.update(push_state=PUSH_SENT, checkout_request_id=checkout_request_id,
                                     merchant_request_id=merchant_request_id, pushed_at=now,
                                     updated_at=now,
                                     next_query_at=now + dt.timedelta(seconds=query_after_s))
                        .where((TopUp.id == topup_id) & TopUp.checkout_request_id.is_null())
                        .execute())
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
    return [row.seq for row in Callback.select(Callback.seq).where(
        Callback.checkout_request_id == checkout_request_id)]


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
    unclaimed are tried against the matching rule again now (``ledger.orphan_matching``).
    """
    with write_transaction():
        changed = (TopUp.update(push_state=PUSH_AMBIGUOUS, updated_at=utcnow())
                   .where((TopUp.id == topup_id) & (TopUp.push_state == PUSH_SENDING))
                   .execute())
        if changed:
            record_event(topup_id, "push_ambiguous", reason=reason)
    # every time, not only when this call changed the row: a first try that failed half-way
    # is done again by the message's retry (it is idempotent)
    retry_orphans(TopUp.select(TopUp.phone).where(TopUp.id == topup_id).scalar())


def retry_orphans(phone: str | None) -> None:
    """Try the matching rule again for the unclaimed payments from this phone: a push to it
    has turned ambiguous or been answered, which may leave one top-up they can answer."""
    if not phone:
        return
    with write_transaction():
        # behind the phone's matching lock: a payment being kept as an orphan right now is
        # committed before this reads, or reads this push's new state itself
        orphan_matching.serialize(phone)
        payments = orphan_matching.payments_to_retry(phone)
    for orphan, paid_at in payments:
        settle_success(orphan.checkout_request_id, amount_cents=orphan.amount_cents,
                       receipt=orphan.mpesa_receipt, phone=orphan.phone, source="callback",
                       callback_seq=orphan.callback_id, paid_at=paid_at)


# --- callbacks -------------------------------------------------------------------------------

def apply_callback(callback_seq: int, *, row=None, confirmed_by_query: bool = False) -> str:
    """Settle the top-up a stored callback speaks of. Safe to run any number of times.

    ``row``: the stored callback, when the caller has read it already (its body never
    changes). ``confirmed_by_query``: STK Query answered ResultCode 0 for its
    CheckoutRequestID; the credit is then what Daraja confirmed (``settle_success``).

    Returns what it did: ``credited``, ``duplicate``, ``receipt_filled``, ``failed``,
    ``orphan``, ``unknown_code``, ``malformed``, ``quarantined:…``, ``refuted:…`` …
    """
    if row is None or row.seq != callback_seq:
        row = Callback.get_or_none(Callback.seq == callback_seq)
    if row is None:
        return "missing"
    try:
        cb = parse(row.body)
    except MalformedCallback:
        return _mark_applied(row.seq, "malformed")
    kind = result_codes.classify(cb.result_code)
    if kind == "paid":
        reason = why_unappliable(cb)
        if reason is not None:
            return quarantine_callback(row.seq, reason)
        outcome = settle_success(cb.checkout_request_id, amount_cents=cb.amount_cents,
                                 receipt=cb.receipt, phone=cb.phone, source="callback",
                                 callback_seq=row.seq, paid_at=row.received_at,
                                 confirmed_by_query=confirmed_by_query)
    elif kind == "failed":
        outcome = settle_failure(cb.checkout_request_id, cb.result_code, cb.result_desc,
                                 source="callback")
    else:
        outcome = "unknown_code"
        topup = TopUp.get_or_none(TopUp.checkout_request_id == cb.checkout_request_id)
        if topup is not None:
            with write_transaction():
                record_event(topup.id, "callback_unknown_code", result_code=cb.result_code,
                             result_desc=cb.result_desc)
    return _mark_applied(row.seq, outcome)


def refute_callback(callback_seq: int, verdict: str) -> str:
    """STK Query contradicted a success callback: credit nothing, keep it for an operator.
    The top-up itself is settled by its own query chain, on Daraja's word."""
    row = Callback.get(Callback.seq == callback_seq)
    topup = TopUp.get_or_none(TopUp.checkout_request_id == row.checkout_request_id)
    if topup is not None:
        with write_transaction():
            record_event(topup.id, "callback_refuted_by_query", callback=callback_seq,
                         verdict=verdict)
    return _mark_applied(row.seq, f"refuted:{verdict}")


def quarantine_callback(callback_seq: int, reason: str) -> str:
    """A callback that cannot be applied is kept once, with its reason, for an operator
    (``topupctl callbacks quarantined``, and the top-up's history): marked applied, so that
    neither the sweep re-drives it nor its top-up's STK Query waits for it."""
    row = Callback.get(Callback.seq == callback_seq)
    topup = TopUp.get_or_none(TopUp.checkout_request_id == row.checkout_request_id)
    if topup is not None:
        with write_transaction():
            record_event(topup.id, "callback_quarantined", callback=callback_seq, reason=reason)
    log.error("a callback cannot be applied; kept for an operator",
              extra={"callback": callback_seq, "reason": reason,
                     "checkout_request_id": row.checkout_request_id})
    return _mark_applied(callback_seq, f"{QUARANTINED}{reason}")


QUARANTINED = "quarantined:"


def is_final(outcome: str | None) -> bool:
    """A callback applied with this outcome is never to be applied again: refuted by Daraja,
    quarantined, or not a callback at all."""
    return bool(outcome) and (outcome.startswith(("refuted:", QUARANTINED))
                              or outcome == "malformed")


def quarantined_callbacks(limit: int = 500) -> list[Callback]:
    """The quarantined callbacks, oldest first."""
    return list(Callback.select().where(Callback.outcome.startswith(QUARANTINED))
                .order_by(Callback.seq).limit(limit))


def _mark_applied(callback_seq: int, outcome: str) -> str:
    outcome = outcome[:64]
    with write_transaction():
        Callback.update(applied_at=utcnow(), outcome=outcome).where(
            Callback.seq == callback_seq).execute()
    return outcome


def settle_success(checkout_request_id: str, *, amount_cents: int | None, receipt: str | None,
                   phone: str | None, source: str, callback_seq: int | None = None,
                   paid_at: dt.datetime | None = None, confirmed_by_query: bool = False,
                   recheck_orphan: bool = True) -> str:
    """M-Pesa says the money moved: credit once, or keep it as an orphan payment.

    ``paid_at``: when the payment reached us (the callback's arrival), for the matching
    rule's time window; now, by default. ``confirmed_by_query``: STK Query said ResultCode 0
    for this CheckoutRequestID and nothing more, so a top-up is credited the amount it asked
    for, and the callback's receipt is kept only if its amount is that one (docs/design.md).
    """
    try:
        # the wallet.top_up event is written with the credit, announced after the commit
        with events.publishing(), write_transaction():
            outcome = _settle_success(checkout_request_id, amount_cents, receipt, phone, source,
                                      callback_seq, paid_at or utcnow(), confirmed_by_query)
    except pw.IntegrityError as exc:
        # The receipt already credited something else (a replay under another
        # CheckoutRequestID, or a forgery): credit nothing, keep the evidence.
        log.warning("receipt conflict on credit", extra={"checkout_request_id": checkout_request_id,
                                                         "error": str(exc)[:200]})
        return "receipt_conflict"
    if outcome != "orphan" or not recheck_orphan:
        return outcome
    # A push records its CheckoutRequestID, then applies the callbacks already stored for it
    # (workers.tasks.push), resolving any orphan kept for it. This callback's own message may
    # have found no top-up just before that commit and kept its orphan just after the push's
    # credit looked for one: a credited top-up with an orphan left unresolved, which an
    # operator could credit again. Now that the orphan is committed, look again: a top-up that
    # has this CheckoutRequestID now is settled by the usual path (its credit resolves the
    # orphan; a top-up already credited resolves it in _already_settled). A push recording
    # the CheckoutRequestID after this read credits later, and finds the orphan committed.
    topup = TopUp.get_or_none(TopUp.checkout_request_id == checkout_request_id)
    if topup is None or topup.status == FAILED:
        return outcome
    return settle_success(checkout_request_id, amount_cents=amount_cents, receipt=receipt,
                          phone=phone, source=source, callback_seq=callback_seq,
                          paid_at=paid_at, confirmed_by_query=confirmed_by_query,
                          recheck_orphan=False)


def _settle_success(checkout_request_id, amount_cents, receipt, phone, source, callback_seq,
                    paid_at, confirmed_by_query):
    topup = TopUp.get_or_none(TopUp.checkout_request_id == checkout_request_id)
    matched_by_phone_and_amount = False
    if topup is None:
        # matching a payment and keeping it as an orphan, one at a time per phone
        orphan_matching.serialize(phone)
        lost = orphan_matching.lost_push_for(checkout_request_id, phone=phone,
                                             amount_cents=amount_cents, paid_at=paid_at)
        if lost is not None and orphan_matching.attach(lost.id, checkout_request_id):
            record_event(lost.id, "orphan_matched", checkout_request_id=checkout_request_id,
                         by="phone and amount")
            topup = TopUp.get(TopUp.id == lost.id)
            matched_by_phone_and_amount = True
    if topup is None or topup.status == FAILED:
        # No top-up knows this CheckoutRequestID (or Daraja earlier said it failed):
        # the money moved all the same, so it is kept for reconciliation.
        _keep_orphan(checkout_request_id, amount_cents, receipt, phone, callback_seq)
        if topup is not None:
            record_event(topup.id, "paid_after_failed", receipt=receipt, source=source)
        return "orphan"

    contradicted = None
    if confirmed_by_query and amount_cents != topup.amount * 100:
        # Daraja confirmed the push, not this callback's amount: the credit is the query's
        contradicted = "amount differs from the one asked"
        record_event(topup.id, "callback_contradicted", callback=callback_seq,
                     reason=contradicted, amount_cents=amount_cents, receipt=receipt)
        amount_cents, receipt, phone, source = None, None, None, "query"
    outcome = _credit(topup, checkout_request_id, amount_cents, receipt, phone, source,
                      matched_by_phone_and_amount)
    return f"refuted:{contradicted}" if contradicted else outcome


def _credit(topup, checkout_request_id, amount_cents, receipt, phone, source,
            matched_by_phone_and_amount) -> str:
    now = utcnow()
    requested_cents = topup.amount * 100
    credit_cents = amount_cents if amount_cents is not None else requested_cents
    flags = []
    if amount_cents is not None and amount_cents != requested_cents:
        flags.append(f"amount: requested {requested_cents} cents, M-Pesa confirmed {amount_cents}")
    if phone and phone != topup.phone:
        flags.append(f"phone: paid from {mask(phone)}")
    if matched_by_phone_and_amount:
        flags.append("push answer lost: payment matched by phone and amount")
    # The claim: only a pending or unknown top-up changes, and it comes back as it now is.
    settled = list(TopUp.update(status=SUCCEEDED, mpesa_receipt=receipt,
                                credited_cents=credit_cents,
                                flagged="; ".join(flags)[:200] or None, completed_at=now,
                                updated_at=now, next_query_at=None)
                   .where((TopUp.id == topup.id) & TopUp.status.in_(SETTLEABLE))
                   .returning(TopUp).execute())
    if not settled:
        return _already_settled(topup, receipt, source)
    settled_topup = settled[0]
    # The wallet's row stays locked from its UPDATE to our COMMIT, and every other credit to
    # this wallet waits for it: on a busy merchant's wallet the statements in between set the
    # pace (make bench, "Crediting one hot wallet"). So what does not need the new balance is
    # written first, and the balance comes back with the UPDATE instead of a second SELECT.
    (OrphanPayment.update(resolved_topup=topup.id, resolved_at=now)
     .where((OrphanPayment.checkout_request_id == checkout_request_id)
            & OrphanPayment.resolved_topup.is_null()).execute())
    credited = list(Wallet.update(balance_cents=Wallet.balance_cents + credit_cents,
                                  updated_at=now)
                    .where(Wallet.account == topup.account_id).returning(Wallet).execute())
    if not credited:
        raise Wallet.DoesNotExist(f"account {topup.account_id} has no wallet")
    wallet = credited[0]
    entry = LedgerEntry.create(
        id=new_id("le"), wallet=wallet, type="top_up", amount_cents=credit_cents,
        balance_after_cents=wallet.balance_cents, topup=topup.id, mpesa_receipt=receipt,
        description=f"M-Pesa top-up {receipt or topup.reference}", source=source)
    record_event(topup.id, "credited", amount_cents=credit_cents, receipt=receipt, source=source,
                 ledger_entry=entry.id, balance_after_cents=wallet.balance_cents,
                 flagged=flags or None)
    events.topup_credited(settled_topup, wallet, entry)
    return "credited"


def _already_settled(topup: TopUp, receipt: str | None, source: str) -> str:
    current = TopUp.get(TopUp.id == topup.id)
    if current.status == SUCCEEDED and receipt and current.mpesa_receipt not in (None, receipt):
        # Two receipts for one push: one of them is not M-Pesa's (a forgery, a replay). Which
        # one only the statement tells: neither is dropped, the top-up is flagged for a person.
        (TopUp.update(flagged=f"receipts disputed: {current.mpesa_receipt} and {receipt}",
                      updated_at=utcnow())
         .where(TopUp.id == topup.id).execute())
        record_event(topup.id, "receipt_disputed", receipt=receipt,
                     credited_receipt=current.mpesa_receipt, source=source)
        log.error("two receipts for one top-up; the statement decides",
                  extra={"topup_id": topup.id, "receipt": receipt,
                         "credited_receipt": current.mpesa_receipt})
        return "receipt_disputed"
    if current.status == SUCCEEDED and current.checkout_request_id is not None:
        # A payment kept as an orphan under this top-up's own CheckoutRequestID (see
        # settle_success) is this top-up's, and it is credited: not an orphan any more.
        (OrphanPayment.update(resolved_topup=current.id, resolved_at=utcnow())
         .where((OrphanPayment.checkout_request_id == current.checkout_request_id)
                & OrphanPayment.resolved_topup.is_null()).execute())
    if current.status == SUCCEEDED and receipt and current.mpesa_receipt is None:
        # Credited earlier from a query answer, which carries no receipt: the callback
        # brings it now, and credits nothing more. Of callbacks racing to do so, the one
        # whose conditional UPDATE changed the row fills it; the others are duplicates.
        filled = TopUp.update(mpesa_receipt=receipt, updated_at=utcnow()).where(
            (TopUp.id == topup.id) & TopUp.mpesa_receipt.is_null()).execute()
        if filled:
            LedgerEntry.update(mpesa_receipt=receipt).where(
                (LedgerEntry.topup == topup.id) & LedgerEntry.mpesa_receipt.is_null()).execute()
            record_event(topup.id, "receipt_filled", receipt=receipt, source=source)
            return "receipt_filled"
    record_event(topup.id, "duplicate_success", receipt=receipt, source=source)
    return "duplicate"


def _keep_orphan(checkout_request_id, amount_cents, receipt, phone, callback_seq):
    if receipt is not None and OrphanPayment.select().where(
            (OrphanPayment.mpesa_receipt == receipt)
            & (OrphanPayment.checkout_request_id != checkout_request_id)).exists():
        return   # the same payment kept already under another CheckoutRequestID
    # the unique indexes decide a race of two workers keeping the same orphan
    (OrphanPayment.insert(checkout_request_id=checkout_request_id, mpesa_receipt=receipt,
                          amount_cents=amount_cents, phone=phone, callback=callback_seq,
                          created_at=utcnow())
     .on_conflict_ignore().execute())


def settle_failure(checkout_request_id: str, result_code: str, result_desc: str, *,
                   source: str) -> str:
    """Daraja says no money moved. A success is never downgraded."""
    now = utcnow()
    with events.publishing(), write_transaction():
        topup = TopUp.get_or_none(TopUp.checkout_request_id == checkout_request_id)
        if topup is None:
            return "unmatched_failure"
        changed = (TopUp.update(status=FAILED, failure_code=result_code[:32],
                                failure_reason=(result_desc or "")[:255], completed_at=now,
                                updated_at=now, next_query_at=None)
                   .where((TopUp.id == topup.id) & TopUp.status.in_(SETTLEABLE))
                   .execute())
        record_event(topup.id, "failed" if changed else "duplicate_failure",
                     result_code=result_code, result_desc=result_desc, source=source)
        if changed:
            events.topup_failed(TopUp.get(TopUp.id == topup.id))
    return "failed" if changed else "duplicate"


# --- queries and giving up -------------------------------------------------------------------

def record_query(topup_id: str, *, answer: str, recheck_in_s: float, **detail) -> None:
    """Note a query's answer and when the sweeper should look again if the retries stop."""
    now = utcnow()
    with write_transaction():
        (TopUp.update(query_attempts=TopUp.query_attempts + 1, updated_at=now,
                      next_query_at=now + dt.timedelta(seconds=recheck_in_s))
         .where((TopUp.id == topup_id) & (TopUp.status == PENDING)).execute())
        record_event(topup_id, "query", answer=answer, **detail)


def give_up(topup_id: str, give_up_after_s: int, now: dt.datetime | None = None) -> str | None:
    """A top-up unresolved this long is settled as far as we can without Daraja's word.

    If its push was certainly never sent it is ``failed`` (no prompt, no money); otherwise it
    becomes ``unknown``, never ``failed``: it is left for a late callback or reconciliation.
    """
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=give_up_after_s)
    with events.publishing(), write_transaction():
        topup = TopUp.get_or_none(TopUp.id == topup_id)
        if topup is None or topup.status != PENDING:
            return None
        if (topup.pushed_at or topup.push_started_at or topup.created_at) >= cutoff:
            return None
        if topup.push_state == PUSH_QUEUED:
            changed = (TopUp.update(status=FAILED, failure_code="not_sent",
                                    failure_reason="The push was never sent before the deadline",
                                    completed_at=now, updated_at=now, next_query_at=None)
                       .where((TopUp.id == topup_id) & (TopUp.status == PENDING)
                              & (TopUp.push_state == PUSH_QUEUED)).execute())
            status = FAILED
        else:
            changed = (TopUp.update(status=UNKNOWN, updated_at=now, next_query_at=None)
                       .where((TopUp.id == topup_id) & (TopUp.status == PENDING)).execute())
            status = UNKNOWN
        if changed:
            record_event(topup_id, "gave_up", status=status, push_state=topup.push_state)
            if status == FAILED:
                events.topup_failed(TopUp.get(TopUp.id == topup_id))
    return status if changed else None


# --- reading ---------------------------------------------------------------------------------

def get_topup(account_id: str, topup_id: str) -> TopUp | None:
    return TopUp.get_or_none((TopUp.id == topup_id) & (TopUp.account == account_id))


def list_topups(account_id: str, *, status: str | None, limit: int,
                starting_after: str | None) -> tuple[list[TopUp], bool] | None:
    """Newest first; None when ``starting_after`` names no top-up of this account."""
    query = TopUp.select().where(TopUp.account == account_id)
    if status:
        query = query.where(TopUp.status == status)
    if starting_after:
        cursor = get_topup(account_id, starting_after)
        if cursor is None:
            return None
        query = query.where(TopUp.seq < cursor.seq)
    rows = list(query.order_by(TopUp.seq.desc()).limit(limit + 1))
    return rows[:limit], len(rows) > limit
