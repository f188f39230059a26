"""What the actors do, as plain functions with their dependencies passed in."""
from __future__ import annotations

import datetime as dt
import logging
import random

import peewee

from daraja import errors as daraja_errors
from ledger import db, inbox, orphans, pushes, result_codes, settlement
from ledger.callbacks import MalformedCallback, parse, why_unappliable
from ledger.models import PENDING, PUSH_QUEUED, Callback, TopUp, utcnow
from ledger.phones import mask
from telemetry import logs, metrics
from workers import phone_lock

log = logging.getLogger(__name__)

# A push refused as "busy" or never sent is tried this many times in all (counted in the
# database, so a worker killed mid-push also counts) before the top-up is failed.
MAX_PUSH_ATTEMPTS = 6
# The query actor's longest backoff (workers.actors.query_topup's max_backoff).
QUERY_MAX_BACKOFF_S = 600
# A stored callback not applied after this long is not waited for by its top-up's query.
CALLBACK_WAIT = dt.timedelta(minutes=10)
# The database blinked (restart, failover, lost connection): worth trying the same again.
DATABASE_ERRORS = db.DATABASE_ERRORS


class PushNotSentYet(Exception):
    """The push certainly did not reach Daraja; try again later."""

    def __init__(self, reason: str, retry_after_s: float | None = None):
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class AskAgainLater(Exception):
    """Daraja has no final word yet (still processing, busy, unreachable): query again."""


class PushOutcomeNotRecorded(Exception):
    """What became of a push is known here and nowhere else, and the database could not take
    it. ``outcome`` (primitives only) goes to a message of its own, retried until it is
    recorded (:func:`record_push_outcome`): Daraja's CheckoutRequestID must not be lost, and a
    push left ``sending`` would never be sent again."""

    def __init__(self, outcome: dict):
        super().__init__(outcome["kind"])
        self.outcome = outcome


# --- the push ----------------------------------------------------------------------------------

def push(topup_id: str, daraja, *, query_after_s: int, redis=None) -> tuple[str, list[int]]:
    """Send a top-up's STK push once. Returns (outcome, callbacks that arrived first)."""
    logs.amend(topup_id=topup_id)
    current = pushes.push_state(topup_id)
    if current is None or current[0] != PENDING or current[1] != PUSH_QUEUED:
        return "not_claimed", []
    if not phone_lock.lock(redis, current[2], topup_id):
        raise PushNotSentYet("phone has a prompt open",
                             retry_after_s=phone_lock.PHONE_BUSY_RETRY_S)
    claimed_at = utcnow()
    try:
        topup = pushes.claim_push(topup_id, now=claimed_at)
    except DATABASE_ERRORS:
        # The claim may be committed with its answer lost (the server died as it answered).
        # Nothing was sent: a claim left `sending` would never be claimed again, so ours is
        # put back if it is in, and the push sent again.
        raise PushOutcomeNotRecorded({"kind": "claim_lost",
                                      "claimed_at": claimed_at.isoformat()}) from None
    if topup is None:
        return "not_claimed", []
    context = {"topup_id": topup_id, "phone": mask(topup.phone)}
    try:
        accepted = daraja.stk_push(amount=topup.amount, phone=topup.phone,
                                   account_reference=topup.reference, description="Top-up")
    except daraja_errors.DarajaError as exc:
        return _push_not_accepted(topup, exc, redis, context, claimed_at)
    except Exception:
        # Not a Daraja answer we understand (a bug, an unexpected library error): the
        # request may have left, so it is treated as possibly sent.
        log.exception("push failed unexpectedly", extra=context)
        _record(topup_id, {"kind": "ambiguous", "reason": "unexpected error"})
        return "ambiguous", []

    logs.amend(checkout_request_id=accepted.checkout_request_id)
    callbacks = _record(topup_id, {
        "kind": "accepted", "checkout_request_id": accepted.checkout_request_id,
        "merchant_request_id": accepted.merchant_request_id, "query_after_s": query_after_s},
        phone=topup.phone)
    # the one line for Daraja's acceptance (the client's own is at DEBUG)
    log.info("push accepted",
             extra={**context, "checkout_request_id": accepted.checkout_request_id,
                    "merchant_request_id": accepted.merchant_request_id,
                    "amount": topup.amount, "account_reference": topup.reference})
    return "sent", callbacks


def _push_not_accepted(topup, exc: daraja_errors.DarajaError, redis, context,
                       claimed_at: dt.datetime) -> tuple[str, list]:
    detail = {"error": type(exc).__name__, "error_code": exc.error_code}
    if exc.may_have_been_processed:
        # The prompt may be on the customer's phone: never send a second one.
        log.warning("push outcome unknown", extra={**context, **detail})
        _record(topup.id, {"kind": "ambiguous",
                           "reason": f"{type(exc).__name__} {exc.error_code or ''}".strip()})
        return "ambiguous", []
    phone_lock.unlock(redis, topup.phone, topup.id)
    if exc.retryable and topup.push_attempts < MAX_PUSH_ATTEMPTS:
        log.info("push not sent, will retry", extra={**context, **detail})
        _record(topup.id, {"kind": "not_sent", "reason": type(exc).__name__,
                           "error_code": exc.error_code, "error_message": exc.error_message,
                           "claimed_at": claimed_at.isoformat()})
        raise PushNotSentYet(type(exc).__name__, retry_after_s=not_sent_delay_s(
            topup.push_attempts, getattr(exc, "retry_after", None)))
    log.info("push refused", extra={**context, **detail})
    _record(topup.id, {"kind": "refused", "error_code": exc.error_code or type(exc).__name__,
                       "error_message": exc.error_message or str(exc),
                       "claimed_at": claimed_at.isoformat()})
    return "refused", []


def not_sent_delay_s(attempts: int, hint_s: float | None) -> float:
    """When to try a push Daraja did not take (busy, throttled, its gateway unreachable):
    5 s doubling with each attempt up to 5 minutes, jittered so that pushes refused together
    do not come back together, and never sooner than Daraja's own hint."""
    grown = min(5.0 * 2 ** max(attempts - 1, 0), 300.0)
    return max(hint_s or 0.0, random.uniform(grown / 2, grown))


def _record(topup_id: str, outcome: dict, *, phone: str | None = None) -> list[int]:
    try:
        return record_push_outcome(topup_id, outcome, phone=phone)
    except DATABASE_ERRORS:
        raise PushOutcomeNotRecorded(outcome) from None


def record_push_outcome(topup_id: str, outcome: dict, *, phone: str | None = None) -> list[int]:
    """Write down what became of a push. Safe to run again: every write is conditional.
    Returns the callbacks that arrived before Daraja's acceptance. ``phone``: the push's,
    when the caller has it (it is never put in the outcome, which may go to a message)."""
    kind = outcome["kind"]
    if kind == "accepted":
        callbacks = pushes.record_push_accepted(
            topup_id, checkout_request_id=outcome["checkout_request_id"],
            merchant_request_id=outcome["merchant_request_id"],
            query_after_s=outcome["query_after_s"])
        # payments from this phone that wait unclaimed may answer an ambiguous push now
        if phone is None:
            phone = TopUp.select(TopUp.phone).where(TopUp.id == topup_id).scalar()
        if orphans.waiting_from(phone):
            settlement.retry_orphans(phone)
        return callbacks
    if kind == "ambiguous":
        pushes.record_push_ambiguous(topup_id, reason=outcome["reason"])
    elif kind == "not_sent":
        pushes.release_push(topup_id, reason=outcome["reason"], claimed_at=_claimed_at(outcome),
                            error_code=outcome["error_code"],
                            error_message=outcome["error_message"])
    elif kind == "refused":
        pushes.record_push_refused(topup_id, error_code=outcome["error_code"],
                                   error_message=outcome["error_message"],
                                   claimed_at=_claimed_at(outcome))
    elif kind == "claim_lost":
        pushes.unclaim_push(topup_id, _claimed_at(outcome))
    else:
        raise ValueError(f"no such push outcome: {kind}")
    return []


def _claimed_at(outcome: dict) -> dt.datetime | None:
    text = outcome.get("claimed_at")
    return dt.datetime.fromisoformat(text) if text else None


# --- callbacks ---------------------------------------------------------------------------------

def apply_callback(callback_seq: int, *, daraja=None, confirm_by_query: bool = False) -> str:
    """Apply a stored callback. With ``confirm_by_query`` a success credits only after STK
    Query confirms ResultCode 0 for its CheckoutRequestID (callbacks are not signed). The
    phone's lock is left to the next push for the phone, which takes it over
    (``phone_lock.lock``)."""
    row = inbox.read_callback(callback_seq)
    if row is None:
        return "missing"
    logs.amend(topup_id=row.topup_id, checkout_request_id=row.checkout_request_id)
    if row.applied_at is not None and settlement.is_done(row.outcome):
        # applied already (a redelivery, a sweep, an early callback handed back by its push):
        # refuted, quarantined or malformed must not credit after all, and a credit or a
        # failure is not written down twice
        return row.outcome
    try:
        cb = parse(row.body)
    except MalformedCallback:
        cb = None
    confirmed = False
    if cb is not None and cb.paid and why_unappliable(cb) is None:
        if row.topup_id is None:
            _wait_for_push_in_flight(cb.phone, row.received_at)
        if confirm_by_query:   # on every application: a credit needs this run's confirmation
            verdict = _confirm(cb.checkout_request_id, daraja)
            if verdict != "paid":
                outcome = settlement.refute_callback(row.seq, verdict)
                log.warning("success callback refuted by query",
                            extra={"callback": callback_seq, "verdict": verdict,
                                   "checkout_request_id": cb.checkout_request_id})
                return outcome
            confirmed = True
    try:
        outcome = settlement.apply_callback(callback_seq, row=row, confirmed_by_query=confirmed)
    except UNAPPLIABLE as exc:
        # Not the database blinking (those are retried): this callback itself is refused by
        # it. Kept once for an operator instead of failing on every retry and sweep.
        outcome = settlement.quarantine_callback(callback_seq, f"the database refused it: "
                                                 f"{type(exc).__name__}")
    # The phone's lock is left to the next push for the phone, which takes it over from a
    # settled top-up (phone_lock.lock): not released here, on every credit.
    if outcome == "credited":
        metrics.credited(row.pushed_at, utcnow(), source="callback")
    log.info("callback applied", extra={"callback": callback_seq, "outcome": outcome,
                                        "checkout_request_id": row.checkout_request_id})
    return outcome


# What the database answers for a callback it can never store, however often it is tried
# (a value out of a column's range). Not ValueError: the pool's MaxConnectionsExceeded is one,
# and it passes.
UNAPPLIABLE = (peewee.DataError, OverflowError)

# A paid callback that no top-up knows, while a push to its phone awaits its answer, waits
# for that answer at most this long (the answer may be its own CheckoutRequestID). It covers
# a push's own timeouts and the sweep that calls a push abandoned mid-send ambiguous.
PUSH_ANSWER_WAIT = dt.timedelta(minutes=5)


def _wait_for_push_in_flight(phone: str | None, received_at) -> None:
    if received_at is not None and received_at < utcnow() - PUSH_ANSWER_WAIT:
        return  # waited long enough: kept as an orphan, matched when that push settles
    if orphans.push_in_flight(phone):
        raise AskAgainLater("a push to this phone awaits its answer")


def _confirm(checkout_request_id: str, daraja) -> str:
    try:
        result = daraja.stk_query(checkout_request_id)
    except daraja_errors.UnknownCheckoutRequest:
        return "unknown_to_daraja"
    except daraja_errors.DarajaError as exc:
        raise AskAgainLater(type(exc).__name__) from None
    if result.pending:
        raise AskAgainLater("still processing")
    verdict = result_codes.classify(result.result_code)
    if verdict not in ("paid", "failed"):   # an undocumented code is no verdict: ask again
        raise AskAgainLater(f"undocumented ResultCode {result.result_code}")
    return verdict


# --- STK Push Query ---------------------------------------------------------------------------

def latest_retry_s(attempts: int, backoff_s: float) -> float:
    """The longest the query message waits before its retry after the query numbered
    ``attempts`` (from 0): Dramatiq's backoff is ``backoff_s`` doubled per earlier retry, then
    jittered up to twice as long, and at most QUERY_MAX_BACKOFF_S. Set as the next check,
    the earliest wait would have the sweeper start a second chain beside one still alive."""
    return min(backoff_s * 2 ** (min(attempts, 16) + 1), QUERY_MAX_BACKOFF_S)


def query(topup_id: str, daraja, *, give_up_after_s: int, redis=None,
          backoff_s: float = 10.0) -> str:
    """Ask Daraja how a pushed top-up ended. Raises AskAgainLater while there is no final
    word; never fails a top-up without a documented failure code.

    Each attempt sets when the sweeper should step in if no retry comes (its message lost
    with Redis, or its worker killed): the latest the actor's next retry can come
    (:func:`latest_retry_s`), not a fixed quarter of an hour."""
    topup = TopUp.get_or_none(TopUp.id == topup_id)
    if topup is None or topup.status != PENDING or not topup.checkout_request_id:
        return "nothing_to_ask"
    recheck_s = latest_retry_s(topup.query_attempts, backoff_s)
    logs.amend(topup_id=topup_id, checkout_request_id=topup.checkout_request_id)
    if settlement.give_up(topup_id, give_up_after_s):
        phone_lock.unlock(redis, topup.phone, topup_id)
        return "gave_up"
    checkout = topup.checkout_request_id
    # Its callback came and waits in the callbacks queue (a backlog longer than
    # STK_QUERY_AFTER_S): applying it settles the top-up, so Daraja, whose calls are metered
    # and throttled, is not asked meanwhile (make bench: with such a backlog, 7 top-ups in 10
    # were queried although every callback had arrived).
    # Only while it can be applied: a quarantined one is marked applied, and one that has
    # waited past CALLBACK_WAIT without being applied does not hold the query back.
    if Callback.select().where((Callback.checkout_request_id == checkout)
                               & Callback.applied_at.is_null() & Callback.well_formed
                               & (Callback.received_at > utcnow() - CALLBACK_WAIT)).exists():
        raise AskAgainLater("its callback is stored and waits to be applied")
    context = {"topup_id": topup_id, "checkout_request_id": checkout}
    try:
        result = daraja.stk_query(checkout)
    except daraja_errors.DarajaError as exc:
        settlement.record_query(topup_id, answer=type(exc).__name__, recheck_in_s=recheck_s,
                                error_code=exc.error_code)
        log.info("query not answered", extra={**context, "error": type(exc).__name__})
        raise AskAgainLater(type(exc).__name__) from None
    if result.pending:
        settlement.record_query(topup_id, answer="pending", recheck_in_s=recheck_s,
                                result_code=result.result_code)
        raise AskAgainLater("still processing")
    kind = result_codes.classify(result.result_code)
    settlement.record_query(topup_id, answer=kind, recheck_in_s=recheck_s,
                            result_code=result.result_code, result_desc=result.result_desc)
    if kind == "paid":
        outcome = settlement.settle_success(checkout, amount_cents=None, receipt=None, phone=None,
                                            source="query")
        if outcome == "credited":
            metrics.credited(topup.pushed_at, utcnow(), source="query")
    elif kind == "failed":
        outcome = settlement.settle_failure(checkout, result.result_code, result.result_desc,
                                            source="query")
    else:
        # An undocumented code: not a failure. Ask again later; the give-up deadline makes
        # it `unknown` if nothing better comes.
        raise AskAgainLater(f"undocumented ResultCode {result.result_code}")
    phone_lock.unlock(redis, topup.phone, topup_id)
    log.info("query settled the top-up", extra={**context, "outcome": outcome})
    return outcome
