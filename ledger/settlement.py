"""Settling a top-up exactly once: a callback, an STK Query answer, or giving up.

Every state change is a conditional UPDATE (``… WHERE status IN (…)``) that acts only if one
row changed, and every credit writes the ledger entry, the wallet balance and the top-up's
status in one transaction behind unique indexes (``settle_success``, the one credit path).
That holds at READ COMMITTED on PostgreSQL and under SQLite's single writer, with any number
of workers racing on the same callback. docs/design.md says the rules in prose.
"""
from __future__ import annotations

import datetime as dt
import logging

import peewee as pw

from ledger import events, orphans, prebuilt, result_codes
from ledger.callbacks import MalformedCallback, parse, why_unappliable
from ledger.db import write_transaction
from ledger.ids import new_id
from ledger.models import (
    C2B, FAILED, PENDING, PUSH_QUEUED, SUCCEEDED, UNKNOWN, Callback, LedgerEntry, OrphanPayment,
    TopUp, Wallet, utcnow,
)
from ledger.phones import mask
from ledger.prebuilt import param
from ledger.topups import SETTLEABLE, record_event

log = logging.getLogger(__name__)


def retry_orphans(phone: str | None) -> None:
    """Try the matching rule again for the unclaimed payments from this phone: a push to it
    has turned ambiguous or been answered, which may leave one top-up they can answer."""
    if not phone:
        return
    with write_transaction():
        # behind the phone's matching lock: a payment being kept as an orphan right now is
        # committed before this reads, or reads this push's new state itself
        orphans.serialize(phone)
        payments = orphans.payments_to_retry(phone)
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


# Outcomes after which a callback has done all it can: applied again (a redelivered message,
# the sweep, a push handing back the callbacks that beat its answer), it would credit nothing
# and change nothing. An ``orphan`` or an ``unmatched_failure`` is not among them: its top-up
# may be known by now.
SETTLED_BY_IT = ("credited", "duplicate", "receipt_filled", "receipt_disputed", "failed")


def is_done(outcome: str | None) -> bool:
    """A callback applied with this outcome needs no applying again."""
    return is_final(outcome) or outcome in SETTLED_BY_IT


def quarantined_callbacks(limit: int = 500) -> list[Callback]:
    """The quarantined callbacks, oldest first."""
    return list(Callback.select().where(Callback.outcome.startswith(QUARANTINED))
                .order_by(Callback.seq).limit(limit))


MARK_APPLIED = prebuilt.Statement(
    Callback.update(applied_at=param(Callback.applied_at), outcome=param(Callback.outcome))
    .where(Callback.seq == param(Callback.seq)))


def _mark_applied(callback_seq: int, outcome: str) -> str:
    # one statement, atomic by itself: no transaction of its own to begin and commit
    outcome = outcome[:64]
    MARK_APPLIED.execute(applied_at=utcnow(), outcome=outcome, seq=callback_seq)
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


# What a credit reads of its top-up: what it decides with, and what the wallet.top_up event
# shows (events.topup_object). Only these: Peewee builds a query column by column, and in a
# worker that is most of a credit's CPU (make bench).
CREDIT_READS = (TopUp.id, TopUp.account, TopUp.provider, TopUp.status, TopUp.amount,
                TopUp.phone, TopUp.reference, TopUp.metadata, TopUp.checkout_request_id,
                TopUp.mpesa_receipt, TopUp.failure_code, TopUp.failure_reason, TopUp.flagged,
                TopUp.created_at, TopUp.updated_at, TopUp.completed_at, TopUp.channel)
CREDIT_READ_NAMES = tuple(field.name for field in CREDIT_READS)


PAID_BY = prebuilt.Statement(
    TopUp.select(*CREDIT_READS)
    .where(TopUp.checkout_request_id == param(TopUp.checkout_request_id)).limit(1))


def _topup_paid_by(checkout_request_id: str) -> TopUp | None:
    row = PAID_BY.first(checkout_request_id=checkout_request_id)
    # a top-up to read and decide with, never saved: the columns not read keep their defaults
    return None if row is None else TopUp(**dict(zip(CREDIT_READ_NAMES, row)))


def _settle_success(checkout_request_id, amount_cents, receipt, phone, source, callback_seq,
                    paid_at, confirmed_by_query):
    topup = _topup_paid_by(checkout_request_id)
    matched_by_phone_and_amount = False
    if topup is None:
        # matching a payment and keeping it as an orphan, one at a time per phone
        orphans.serialize(phone)
        lost = orphans.lost_push_for(checkout_request_id, phone=phone,
                                     amount_cents=amount_cents, paid_at=paid_at)
        if lost is not None and orphans.attach(lost.id, checkout_request_id):
            record_event(lost.id, "orphan_matched", checkout_request_id=checkout_request_id,
                         by="phone and amount")
            topup = _topup_paid_by(checkout_request_id)
            matched_by_phone_and_amount = True
    if topup is None and receipt is not None:
        credited = (LedgerEntry.select(LedgerEntry.topup)
                    .where(LedgerEntry.mpesa_receipt == receipt).scalar())
        if credited is not None:
            # The same payment, credited already by another road (a C2B confirmation or a
            # Pull Transactions row that named the push by its AccountReference before its
            # CheckoutRequestID was known): this report attaches to that credit.
            record_event(credited, "duplicate_success", receipt=receipt, source=source,
                         checkout_request_id=checkout_request_id)
            return "duplicate"
    if topup is None or topup.status == FAILED:
        # No top-up knows this CheckoutRequestID (or Daraja earlier said it failed):
        # the money moved all the same, so it is kept for reconciliation.
        orphans.keep(checkout_request_id, amount_cents, receipt, phone, callback_seq)
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


# The credit's statements (ledger.prebuilt: Peewee writes their SQL once).
# The claim: only a pending or unknown top-up changes.
CLAIM = prebuilt.Statement(
    TopUp.update(status=SUCCEEDED, mpesa_receipt=param(TopUp.mpesa_receipt),
                 credited_cents=param(TopUp.credited_cents), flagged=param(TopUp.flagged),
                 completed_at=param(TopUp.completed_at), updated_at=param(TopUp.updated_at),
                 next_query_at=None)
    .where((TopUp.id == param(TopUp.id)) & TopUp.status.in_(SETTLEABLE)))
# The orphan payments the credit resolves: kept under its CheckoutRequestID, or with its
# receipt (a paybill payment kept before the push it paid was known, which has none). A
# NULL matches nothing, so a credit without one of them resolves by the other.
RESOLVE_ORPHANS = prebuilt.Statement(
    OrphanPayment.update(resolved_topup=param(OrphanPayment.resolved_topup),
                         resolved_at=param(OrphanPayment.resolved_at))
    .where(((OrphanPayment.checkout_request_id == param(OrphanPayment.checkout_request_id))
            | (OrphanPayment.mpesa_receipt == param(OrphanPayment.mpesa_receipt)))
           & OrphanPayment.resolved_topup.is_null()))
ADD_TO_WALLET = prebuilt.Statement(
    Wallet.update(balance_cents=Wallet.balance_cents + param(Wallet.balance_cents, "cents"),
                  updated_at=param(Wallet.updated_at))
    .where(Wallet.account == param(Wallet.account))
    .returning(Wallet.id, Wallet.balance_cents, Wallet.currency))
TOP_UP_ENTRY = prebuilt.Insert(
    LedgerEntry, LedgerEntry.id, LedgerEntry.wallet, LedgerEntry.type, LedgerEntry.amount_cents,
    LedgerEntry.balance_after_cents, LedgerEntry.topup, LedgerEntry.mpesa_receipt,
    LedgerEntry.description, LedgerEntry.source, LedgerEntry.created_at)


def _credit(topup, checkout_request_id, amount_cents, receipt, phone, source,
            matched_by_phone_and_amount) -> str:
    now = utcnow()
    requested_cents = topup.amount * 100
    credit_cents = amount_cents if amount_cents is not None else requested_cents
    flags = []
    # a paybill payment asked for nothing: its amount is simply what was paid
    if amount_cents is not None and amount_cents != requested_cents and topup.channel != C2B:
        flags.append(f"amount: requested {requested_cents} cents, M-Pesa confirmed {amount_cents}")
    if phone and phone != topup.phone:
        flags.append(f"phone: paid from {mask(phone)}")
    if matched_by_phone_and_amount:
        flags.append("push answer lost: payment matched by phone and amount")
    # The claim: only a pending or unknown top-up changes. What it writes, and what the read
    # before it saw of the columns a pending top-up never changes, is the settled top-up.
    settled = dict(mpesa_receipt=receipt, credited_cents=credit_cents,
                   flagged="; ".join(flags)[:200] or None, completed_at=now, updated_at=now)
    if not CLAIM.rowcount(id=topup.id, **settled):
        return _already_settled(topup, receipt, source)
    for column, value in dict(settled, status=SUCCEEDED, next_query_at=None).items():
        setattr(topup, column, value)
    # The wallet's row stays locked from its UPDATE to our COMMIT, and every other credit to
    # this wallet waits for it: on a busy merchant's wallet the statements in between set the
    # pace (make bench, "Crediting one hot wallet"). So what does not need the new balance is
    # written first, and the balance comes back with the UPDATE instead of a second SELECT.
    if checkout_request_id is not None or receipt is not None:
        RESOLVE_ORPHANS.execute(resolved_topup=topup.id, resolved_at=now,
                                checkout_request_id=checkout_request_id, mpesa_receipt=receipt)
    credited = ADD_TO_WALLET.first(cents=credit_cents, updated_at=now, account=topup.account_id)
    if credited is None:
        raise Wallet.DoesNotExist(f"account {topup.account_id} has no wallet")
    wallet_id, balance_cents, currency = credited
    entry_id = new_id("le")
    TOP_UP_ENTRY.execute(entry_id, wallet_id, "top_up", credit_cents, balance_cents, topup.id,
                         receipt, f"M-Pesa top-up {receipt or topup.reference}", source, now)
    record_event(topup.id, "credited", amount_cents=credit_cents, receipt=receipt, source=source,
                 ledger_entry=entry_id, balance_after_cents=balance_cents,
                 flagged=flags or None)
    events.topup_credited(topup, ledger_entry_id=entry_id, amount_cents=credit_cents,
                          balance_cents=balance_cents, currency=currency)
    return "credited"


def credit_topup(topup_id: str, *, amount_cents: int, receipt: str, phone: str | None,
                 source: str) -> str:
    """Credit a top-up that no CheckoutRequestID settles (an orphan payment a person assigned
    to an account: ``ledger.assignments``; a paybill payment's own top-up, or a push a C2B
    confirmation names by its AccountReference: ``ledger.c2b``) through the one credit path.
    Call inside ``events.publishing()`` and a write transaction; returns ``credited``, or
    what ``_credit`` found instead."""
    topup = TopUp.get(TopUp.id == topup_id)
    return _credit(topup, topup.checkout_request_id, amount_cents, receipt, phone, source,
                   False)


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
            (OrphanPayment.update(resolved_topup=topup.id, resolved_at=utcnow())
             .where((OrphanPayment.mpesa_receipt == receipt)
                    & OrphanPayment.resolved_topup.is_null()).execute())
            record_event(topup.id, "receipt_filled", receipt=receipt, source=source)
            return "receipt_filled"
    record_event(topup.id, "duplicate_success", receipt=receipt, source=source)
    return "duplicate"


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
