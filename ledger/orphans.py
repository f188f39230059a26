"""Orphan payments: money M-Pesa confirmed for a CheckoutRequestID no top-up knows, kept, and
the one rule that gives such a payment to a top-up whose push answer was lost.

A push whose answer never came back (a read timeout, ``500.003.1001``, an HTML page) may
have reached Daraja: its CheckoutRequestID was never learnt, so its callback arrives as a
payment no top-up knows (an *orphan*). The callback does not echo the AccountReference, so
the only way to tie the two together before the statement arrives is by phone and amount,
and that is done only when nothing else can be meant. The rule, in full (docs/design.md
repeats it for readers):

A paid callback with CheckoutRequestID X, phone P, amount A, stored at time R, is attached
to top-up T only if all of these hold:

1. No push to P is in flight (claimed, its answer not yet recorded). While one is, the
   callback waits for that answer (``workers.tasks``, bounded by ``PUSH_ANSWER_WAIT``): the
   answer may be X itself.
2. The candidates are every top-up, of any account, whose push to P may have reached Daraja
   without telling us its CheckoutRequestID: push in flight or ambiguous, no
   CheckoutRequestID, still pending or unknown, its push started within ``MATCH_WINDOW``
   before R (and not after R, give or take ``CLOCK_SKEW``). There is exactly one, T.
3. T's push is ambiguous (not in flight) and asked for exactly A.
4. No other payment from P that no top-up claims arrived since T's push started
   (give or take ``CLOCK_SKEW``): two payments could answer one push.
5. T still has no CheckoutRequestID and its push is still ambiguous when X is written on it
   (one conditional UPDATE: of two payments racing for T, one is attached).

Either order works: a payment that comes first is kept as an orphan and tried again when a
push to its phone turns ambiguous or is answered (``payments_to_retry``), and by the
scheduler's sweep; one that comes after T's push turned ambiguous is tried when it is
applied. Matching, keeping an orphan and reading the orphans to try again take the phone's
lock (``serialize``), so two payments from one phone are matched one after the other.
Anything less certain stays an orphan for reconciliation against the M-Pesa statement,
which carries the AccountReference.
"""
from __future__ import annotations

import datetime as dt

import peewee as pw
from peewee import fn

from ledger import prebuilt
from ledger.db import database
from ledger.models import (
    PENDING, PUSH_AMBIGUOUS, PUSH_SENDING, Callback, LedgerEntry, OrphanPayment, TopUp, utcnow,
)
from ledger.prebuilt import param
from ledger.topups import SETTLEABLE

MATCH_WINDOW = dt.timedelta(hours=24)
CLOCK_SKEW = dt.timedelta(minutes=1)


def push_in_flight(phone: str | None, *, now: dt.datetime | None = None) -> bool:
    """A push to this phone is claimed and its answer is not recorded yet (rule 1)."""
    if not phone:
        return False
    now = now or utcnow()
    return (TopUp.select(TopUp.id)
            .where((TopUp.phone == phone) & (TopUp.push_state == PUSH_SENDING)
                   & (TopUp.status == PENDING)
                   & (TopUp.push_started_at >= now - MATCH_WINDOW))
            .exists())


def lost_push_for(checkout_request_id: str, *, phone: str | None, amount_cents: int | None,
                  paid_at: dt.datetime) -> TopUp | None:
    """The one top-up whose lost push this payment answers (rules 2 to 4), or None."""
    if not phone or amount_cents is None or amount_cents <= 0:
        return None
    candidates = list(TopUp.select(TopUp.id, TopUp.push_state, TopUp.amount,
                                   TopUp.push_started_at)
                      .where((TopUp.phone == phone) & TopUp.checkout_request_id.is_null()
                             & TopUp.push_state.in_((PUSH_SENDING, PUSH_AMBIGUOUS))
                             & TopUp.status.in_(SETTLEABLE)
                             & (TopUp.push_started_at >= paid_at - MATCH_WINDOW)
                             & (TopUp.push_started_at <= paid_at + CLOCK_SKEW))
                      .limit(2))
    if len(candidates) != 1:
        return None
    topup = candidates[0]
    if topup.push_state != PUSH_AMBIGUOUS or topup.amount * 100 != amount_cents:
        return None
    others = (OrphanPayment.select(OrphanPayment.seq)
              .join(TopUp, pw.JOIN.LEFT_OUTER,
                    on=(TopUp.checkout_request_id == OrphanPayment.checkout_request_id))
              .where(OrphanPayment.resolved_topup.is_null() & TopUp.id.is_null()
                     & (OrphanPayment.phone == phone)
                     & (OrphanPayment.checkout_request_id != checkout_request_id)
                     & (OrphanPayment.created_at >= topup.push_started_at - CLOCK_SKEW)))
    if others.exists():
        return None
    return topup


def attach(topup_id: str, checkout_request_id: str) -> bool:
    """Write the payment's CheckoutRequestID on the top-up (rule 5). Call inside the
    transaction that credits it."""
    return bool(TopUp.update(checkout_request_id=checkout_request_id, updated_at=utcnow())
                .where((TopUp.id == topup_id) & TopUp.checkout_request_id.is_null()
                       & (TopUp.push_state == PUSH_AMBIGUOUS))
                .execute())


# read after every answered push (ledger.prebuilt: Peewee writes it once)
WAITING_FROM = prebuilt.Statement(
    OrphanPayment.select(OrphanPayment.seq)
    .where((OrphanPayment.phone == param(OrphanPayment.phone))
           & OrphanPayment.resolved_topup.is_null()
           & (OrphanPayment.created_at >= param(OrphanPayment.created_at, "since")))
    .limit(1))


def waiting_from(phone: str | None) -> bool:
    """Some payment from this phone waits unclaimed within the window: worth trying the rule
    again (``settlement.retry_orphans``) once a push to the phone has been answered. Read
    without the phone's lock: one being kept at this very moment is tried by the scheduler's
    sweep (``workers.sweeps.phones_with_orphans_to_match``), as one whose try was lost."""
    if not phone:
        return False
    return WAITING_FROM.first(phone=phone, since=utcnow() - MATCH_WINDOW) is not None


def payments_to_retry(phone: str | None, *,
                      limit: int = 10) -> list[tuple[OrphanPayment, dt.datetime]]:
    """Unclaimed payments from this phone within the window, newest first (an older one
    cannot answer a push that started after it), each with the time it reached us: what to
    try the rule on again once a push to the phone has turned ambiguous or been answered."""
    if not phone:
        return []
    since = utcnow() - MATCH_WINDOW
    rows = (OrphanPayment.select(OrphanPayment, Callback.received_at.alias("received_at"))
            .join(TopUp, pw.JOIN.LEFT_OUTER,
                  on=(TopUp.checkout_request_id == OrphanPayment.checkout_request_id))
            .switch(OrphanPayment)
            .join(Callback, pw.JOIN.LEFT_OUTER, on=(Callback.seq == OrphanPayment.callback))
            .where(OrphanPayment.resolved_topup.is_null() & TopUp.id.is_null()
                   & OrphanPayment.checkout_request_id.is_null(False)   # not a paybill payment
                   & (OrphanPayment.phone == phone) & (OrphanPayment.created_at >= since))
            .order_by(OrphanPayment.seq.desc()).limit(limit).objects())
    return [(row, row.received_at or row.created_at) for row in rows]


def serialize(phone: str | None) -> None:
    """Hold this phone's matching lock until the current transaction ends, so that matching
    a payment, keeping one as an orphan and reading the orphans to try again happen one at
    a time per phone. PostgreSQL: a transaction-scoped advisory lock (Peewee has no word for
    it, hence the function call by name). SQLite: its write transactions (BEGIN IMMEDIATE)
    run one at a time already."""
    if phone and isinstance(database.obj, pw.PostgresqlDatabase):
        database.execute(pw.Select(columns=[fn.pg_advisory_xact_lock(fn.hashtext(phone))]))


def keep(checkout_request_id: str, amount_cents: int | None, receipt: str | None,
         phone: str | None, callback_seq: int | None) -> None:
    """Keep a payment no top-up claims, once, for reconciliation or an operator. Call inside
    the transaction that found no top-up for it."""
    if receipt is not None and OrphanPayment.select().where(
            (OrphanPayment.mpesa_receipt == receipt)
            & (OrphanPayment.checkout_request_id != checkout_request_id)).exists():
        return   # the same payment kept already under another CheckoutRequestID
    # the unique indexes decide a race of two workers keeping the same orphan
    (OrphanPayment.insert(checkout_request_id=checkout_request_id, mpesa_receipt=receipt,
                          amount_cents=amount_cents, phone=phone, callback=callback_seq,
                          created_at=utcnow())
     .on_conflict_ignore().execute())


def resolve_credited(limit: int = 500) -> int:
    """Resolve the orphan payments whose receipt a credit carries: the same payment reached
    the ledger by another road (an STK callback, a C2B confirmation, a Pull Transactions row),
    and the credit was written while the orphan was being kept, so it could not see it. The
    scheduler's sweep runs this; the unique index on ``ledger_entry.mpesa_receipt`` refuses a
    second credit of such a payment meanwhile. Returns how many it resolved."""
    rows = list(OrphanPayment.select(OrphanPayment.seq, LedgerEntry.topup.alias("topup_id"))
                .join(LedgerEntry, on=(LedgerEntry.mpesa_receipt == OrphanPayment.mpesa_receipt))
                .where(OrphanPayment.resolved_topup.is_null() & LedgerEntry.topup.is_null(False))
                .limit(limit).dicts())
    now = utcnow()
    resolved = 0
    for row in rows:
        resolved += (OrphanPayment.update(resolved_topup=row["topup_id"], resolved_at=now)
                     .where((OrphanPayment.seq == row["seq"])
                            & OrphanPayment.resolved_topup.is_null()).execute())
    return resolved
