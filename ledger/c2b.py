"""Paybill payments (C2B, contract §6): a customer pays from the phone's menu (Pay Bill → the
paybill → an account number → the amount) and Daraja reports it, as a C2B confirmation or as
a Pull Transactions row. Reconciliation's ``--apply`` brings the same payment from a
statement row. Every report of a payment is settled by :func:`settle`, one rule:

1. **The receipt credited already** (the same payment by another road: its STK callback, an
   earlier confirmation, a Pull Transactions row, a statement): nothing more is credited;
   the report is noted in that top-up's history (``duplicate_success``, with its source).
2. **The AccountReference of a push.** On some paybills an STK payment is also reported as a
   C2B confirmation whose BillRefNumber is the push's AccountReference. The STK top-ups with
   that reference (as stored, or in capitals) and that amount, created within
   ``REFERENCE_WINDOW``, that can still take a credit (``pending``, ``unknown``, or credited on
   STK Query's word without a receipt): exactly one is settled by this payment, through the
   credit path of every top-up (``settlement.credit_topup``); more than one, and the payment
   is kept as an orphan for an operator. When the BillRefNumber is also another account's
   account number, it cannot be told whose wallet the money is for: kept as an orphan.
3. **An account number** (``ledger.account_numbers.normalize``: case, spaces, dashes and
   look-alike characters forgiven): a top-up with ``channel`` ``c2b`` is created for that
   account and credited what M-Pesa confirmed, to the cent, in the same transaction.
4. **Anything else** is kept as an orphan payment, without a CheckoutRequestID, listed by
   ``topupctl orphans``.

Nothing here checks and then writes on trust: the unique indexes on the receipt
(``ledger_entry.mpesa_receipt``, ``top_up.mpesa_receipt``, ``orphan_payment.mpesa_receipt``)
decide every race, whichever road each report took. A credit refused by them is undone with
the top-up made for it (a savepoint), and the report attaches to the credit that won.

A confirmation is stored exactly as received before it is answered (:func:`store`, one
INSERT), and applied by a worker (:func:`apply_stored`), at most once per stored row: the
row is claimed in the transaction that settles it.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import peewee as pw

from ledger import accounts, events, settlement
from ledger.callbacks import MAX_PAYMENT_CENTS
from ledger.db import DATABASE_ERRORS, discard_connection, write_transaction
from ledger.ids import new_id
from ledger.inbox import storable
from ledger.models import (
    C2B, PUSH_NONE, SUCCEEDED, C2BConfirmation, LedgerEntry, OrphanPayment, TopUp, utcnow,
)
from ledger.phones import mask
from ledger.statement import EAT
from ledger.topups import SETTLEABLE, record_event

log = logging.getLogger(__name__)

# Where a report came from: a stored row's ``source``, and the credit's (``ledger_entry.source``,
# the top-up's history).
CONFIRMATION, PULL, STATEMENT = "c2b", "pull", "statement"
# A push is named by its AccountReference this long after it was created, at most: a
# payment reported much later is not taken for it.
REFERENCE_WINDOW = dt.timedelta(days=7)
QUARANTINED = "quarantined:"

_RECEIPT = re.compile(r"[A-Z0-9]{1,32}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WHOLE_PHONE = re.compile(r"254[17]\d{8}")


class MalformedPayment(ValueError):
    """Not a report of a paybill payment: the field it lacks is named."""


@dataclass(frozen=True)
class Payment:
    """One paybill payment, as any report of it says it."""
    receipt: str
    amount_cents: int | None       # None: not a whole number of cents
    bill_ref: str                  # what the customer typed as the account number
    phone: str | None              # as Daraja gave it: masked in C2B v2, whole in Pull
    paid_at: dt.datetime | None    # naive UTC
    shortcode: str | None = None


@dataclass(frozen=True)
class Settled:
    outcome: str
    topup_id: str | None = None


# --- reading the reports -----------------------------------------------------------------------

def _text(value, limit: int) -> str | None:
    if value is None or isinstance(value, (bool, dict, list)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = _CONTROL.sub(" ", str(value)).strip()
    return text[:limit] if text else None


def _cents(value) -> int | None:
    """``"5.00"``, ``5``, ``"1,000.50"`` → cents; None when not a whole number of cents;
    MalformedPayment when not an amount at all."""
    if value is None or isinstance(value, (bool, dict, list)):
        raise MalformedPayment("the amount is missing")
    try:
        amount = Decimal(str(value).replace(",", "").strip())
    except InvalidOperation:
        raise MalformedPayment("the amount is not a number") from None
    if not amount.is_finite():
        raise MalformedPayment("the amount is not a number")
    cents = amount * 100
    if cents != cents.to_integral_value() or abs(cents) > 10 ** 15:
        return None
    return int(cents)


def _eat_time(value) -> dt.datetime | None:
    text = _text(value, 32)
    if not text:
        return None
    for fmt in ("%Y%m%d%H%M%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%S"):
        try:
            when = dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
        if fmt.endswith("Z"):
            return when
        return when.replace(tzinfo=EAT).astimezone(dt.timezone.utc).replace(tzinfo=None)
    return None


def _object(body) -> dict:
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise MalformedPayment("the body is not JSON") from None
    if not isinstance(body, dict):
        raise MalformedPayment("the body is not a JSON object")
    return body


def parse_confirmation(body) -> Payment:
    """A C2B confirmation (or validation) body: ``TransID``, ``TransAmount``,
    ``BillRefNumber``, ``MSISDN``, ``TransTime``, ``BusinessShortCode``; every value a string
    in Daraja's bodies, numbers accepted all the same."""
    data = _object(body)
    receipt = _text(data.get("TransID"), 64)
    if receipt is None:
        raise MalformedPayment("TransID is missing")
    return Payment(receipt=receipt.upper(), amount_cents=_cents(data.get("TransAmount")),
                   bill_ref=_text(data.get("BillRefNumber"), 64) or "",
                   phone=_text(data.get("MSISDN"), 32), paid_at=_eat_time(data.get("TransTime")),
                   shortcode=_text(data.get("BusinessShortCode"), 16))


def parse_pulled(item) -> Payment:
    """A Pull Transactions row: ``transactionId``, ``amount``, ``billreference``, ``msisdn``
    (a number, whole), ``trxDate``."""
    data = _object(item)
    receipt = _text(data.get("transactionId"), 64)
    if receipt is None:
        raise MalformedPayment("transactionId is missing")
    return Payment(receipt=receipt.upper(), amount_cents=_cents(data.get("amount")),
                   bill_ref=_text(data.get("billreference"), 64) or "",
                   phone=_text(data.get("msisdn"), 32), paid_at=_eat_time(data.get("trxDate")))


def why_unappliable(payment: Payment, shortcode: str | None = None) -> str | None:
    """Why a payment cannot be credited as it stands (it is kept, quarantined, for an
    operator), or None: not what M-Pesa sends, or not for this paybill."""
    if not _RECEIPT.fullmatch(payment.receipt):
        return "receipt is not letters and digits"
    if payment.amount_cents is None:
        return "amount is not a whole number of cents"
    if not 0 < payment.amount_cents <= MAX_PAYMENT_CENTS:
        return "amount is not one M-Pesa pays (KES 0.01 to 250,000)"
    if shortcode and payment.shortcode and payment.shortcode != shortcode:
        return f"for another paybill ({payment.shortcode[:16]})"
    return None


# --- validation -------------------------------------------------------------------------------

ACCEPT, UNKNOWN_ACCOUNT, BAD_AMOUNT, REFUSED = "0", "C2B00012", "C2B00013", "C2B00016"
MIN_VALID_CENTS, MAX_VALID_CENTS = 100, MAX_PAYMENT_CENTS


def verdict(body) -> str:
    """What the validation URL answers Daraja about a payment about to be made, from the
    ledger alone: ``0`` for an account number an account has (or the AccountReference of a
    push that can take this amount) and an amount of 1 to 250,000 shillings; ``C2B00012``
    for an account number nobody has, ``C2B00013`` for an amount out of range, ``C2B00016``
    for a body that is no payment at all."""
    try:
        data = _object(body)
    except MalformedPayment:
        return REFUSED
    bill_ref = _text(data.get("BillRefNumber"), 64) or ""
    try:
        cents = _cents(data.get("TransAmount"))
    except MalformedPayment:
        cents = None
    if accounts.find_by_account_number(bill_ref) is None and not _pushes_named(
            Payment(receipt="", amount_cents=cents, bill_ref=bill_ref, phone=None,
                    paid_at=None)):
        return UNKNOWN_ACCOUNT
    if cents is None or not MIN_VALID_CENTS <= cents <= MAX_VALID_CENTS:
        return BAD_AMOUNT
    return ACCEPT


# --- storing ---------------------------------------------------------------------------------

def store(body: bytes, remote_addr: str | None) -> tuple[int, Payment | None]:
    """Store a C2B confirmation exactly as received, committed before this returns (one
    INSERT, on this thread's connection, which it keeps: ``ledger.db``); the stored row's
    sequence number and the payment, or None when it is not one (then it is kept, marked
    ``malformed``, never applied)."""
    try:
        payment = parse_confirmation(body)
    except MalformedPayment:
        payment = None
    now = utcnow()
    row = {"received_at": now, "source": CONFIRMATION, "remote_addr": remote_addr,
           "body": body.decode("utf-8", errors="replace"), "well_formed": payment is not None,
           "trans_id": payment.receipt[:32] if payment else None,
           "applied_at": None if payment else now, "outcome": None if payment else "malformed"}
    row = storable(row)
    try:
        seq = C2BConfirmation.insert(**row).execute()
    except DATABASE_ERRORS:
        # as the STK callback's inbox does: a thread's kept connection that died with a
        # database restart is replaced once (a second failure is the caller's 503)
        discard_connection()
        seq = C2BConfirmation.insert(**row).execute()
    return seq, payment


def store_pulled(item: dict) -> int:
    """Store a Pull Transactions row no confirmation brought, for :func:`apply_stored`."""
    payment = parse_pulled(item)
    row = {"received_at": utcnow(), "source": PULL,
           "body": json.dumps(item, separators=(",", ":"), default=str),
           "trans_id": payment.receipt[:32], "well_formed": True}
    return C2BConfirmation.insert(**storable(row)).execute()


def known_receipts(receipts: list[str]) -> set[str]:
    """Of these receipts, those the ledger knows already: credited, or kept as an orphan. A
    confirmation stored and not applied yet (the workers down, or behind) does not count: the
    pulled row is applied at once, and whichever of the two comes second attaches."""
    receipts = sorted({r.upper() for r in receipts})
    known: set[str] = set()
    for start in range(0, len(receipts), 500):
        chunk = receipts[start:start + 500]
        known.update(LedgerEntry.select(LedgerEntry.mpesa_receipt)
                     .where(LedgerEntry.mpesa_receipt.in_(chunk)).scalars())
        known.update(OrphanPayment.select(OrphanPayment.mpesa_receipt)
                     .where(OrphanPayment.mpesa_receipt.in_(chunk)).scalars())
    return known


# --- applying a stored report ----------------------------------------------------------------

def apply_stored(seq: int, *, shortcode: str | None = None) -> str:
    """Settle the payment a stored confirmation (or pulled row) reports; safe to run any
    number of times, at once or in turn: the row is claimed in the transaction that settles
    it, and a row already applied answers the outcome it was applied with.

    ``shortcode``: the paybill (DARAJA_C2B_SHORTCODE); a confirmation for another one is
    quarantined, not credited."""
    row = C2BConfirmation.get_or_none(C2BConfirmation.seq == seq)
    if row is None:
        return "missing"
    if row.applied_at is not None:
        return row.outcome or "applying"
    try:
        payment = parse_pulled(row.body) if row.source == PULL else parse_confirmation(row.body)
    except MalformedPayment:
        return _mark(seq, "malformed")
    reason = why_unappliable(payment, shortcode)
    if reason is not None:
        return quarantine(seq, reason, payment.receipt)
    try:
        with events.publishing(), write_transaction():
            claimed = (C2BConfirmation.update(applied_at=utcnow(), outcome="applying")
                       .where((C2BConfirmation.seq == seq)
                              & C2BConfirmation.applied_at.is_null()).execute())
            if not claimed:   # another worker applied it meanwhile
                return (C2BConfirmation.select(C2BConfirmation.outcome)
                        .where(C2BConfirmation.seq == seq).scalar()) or "applying"
            settled = _settle(payment, row.source, seq)
            (C2BConfirmation.update(outcome=settled.outcome, topup_id=settled.topup_id)
             .where(C2BConfirmation.seq == seq).execute())
    except pw.DataError as exc:
        # the database refuses a value of this report in any column: it never will
        return quarantine(seq, f"the database refused it: {type(exc).__name__}", payment.receipt)
    log.info("paybill payment applied",
             extra={"c2b_confirmation": seq, "source": row.source, "receipt": payment.receipt,
                    "outcome": settled.outcome, "topup_id": settled.topup_id})
    return settled.outcome


def quarantine(seq: int, reason: str, receipt: str | None = None) -> str:
    """A report that cannot be applied: kept once, with its reason, for an operator."""
    log.error("a paybill payment cannot be applied; kept for an operator",
              extra={"c2b_confirmation": seq, "reason": reason, "receipt": receipt})
    return _mark(seq, f"{QUARANTINED}{reason}")


def _mark(seq: int, outcome: str) -> str:
    outcome = outcome[:64]
    with write_transaction():
        (C2BConfirmation.update(applied_at=utcnow(), outcome=outcome)
         .where(C2BConfirmation.seq == seq).execute())
    return outcome


def unapplied(older_than: dt.datetime, limit: int = 500) -> list[int]:
    """Stored reports not applied since before ``older_than``: for the scheduler's sweep."""
    return list(C2BConfirmation.select(C2BConfirmation.seq)
                .where(C2BConfirmation.applied_at.is_null()
                       & (C2BConfirmation.received_at < older_than))
                .order_by(C2BConfirmation.seq).limit(limit).scalars())


def for_topup(topup_id: str) -> list[C2BConfirmation]:
    """The reports that credited a top-up or attached to its credit, oldest first."""
    return list(C2BConfirmation.select().where(C2BConfirmation.topup_id == topup_id)
                .order_by(C2BConfirmation.seq))


# --- the rule --------------------------------------------------------------------------------

def settle(payment: Payment, *, source: str, confirmation_seq: int | None = None) -> Settled:
    """Settle one report of a paybill payment by the module's rule, in one transaction (the
    caller's, when there is one)."""
    with events.publishing(), write_transaction():
        return _settle(payment, source, confirmation_seq)


def _settle(payment: Payment, source: str, seq: int | None) -> Settled:
    attached = _attach_to_its_credit(payment, source, seq)
    if attached is not None:
        return attached
    account = accounts.find_by_account_number(payment.bill_ref)
    named = _pushes_named(payment)
    if len(named) > 1:
        return _keep(payment, seq, source, "more than one top-up has this reference and amount")
    if named:
        topup = named[0]
        if account is not None and account.id != topup.account_id:
            return _keep(payment, seq, source, "both an account number and another account's "
                                               "top-up reference")
        settled = _settle_push(topup, payment, source, seq)
        if settled is not None:
            return settled
    if account is not None:
        outcome, topup_id = _credit_account(account.id, account.account_number, payment,
                                            source)
        if outcome == "credited":
            return Settled(outcome, topup_id)
        attached = _attach_to_its_credit(payment, source, seq)
        if attached is not None:
            return attached
        return _keep(payment, seq, source, f"its credit was refused ({outcome})")
    return _keep(payment, seq, source, "no account has this account number")


def _attach_to_its_credit(payment: Payment, source: str, seq: int | None) -> Settled | None:
    """Step 1: the receipt credited a top-up already; this report is noted there."""
    topup_id = (LedgerEntry.select(LedgerEntry.topup)
                .where(LedgerEntry.mpesa_receipt == payment.receipt).scalar())
    if topup_id is None:
        return None
    record_event(topup_id, "duplicate_success", receipt=payment.receipt, source=source,
                 bill_ref_number=payment.bill_ref, c2b_confirmation=seq)
    return Settled("duplicate", topup_id)


def _pushes_named(payment: Payment) -> list[TopUp]:
    """Step 2's candidates: the top-ups with this AccountReference and amount that can still
    take this payment's credit (at most two are read: two are already too many)."""
    cents = payment.amount_cents
    if not payment.bill_ref or cents is None or cents % 100:
        return []
    references = {payment.bill_ref, payment.bill_ref.upper()}
    return list(TopUp.select(TopUp.id, TopUp.account, TopUp.status, TopUp.mpesa_receipt)
                .where(TopUp.reference.in_(sorted(references)) & (TopUp.amount == cents // 100)
                       & (TopUp.created_at >= utcnow() - REFERENCE_WINDOW)
                       & (TopUp.status.in_(SETTLEABLE)
                          | ((TopUp.status == SUCCEEDED) & TopUp.mpesa_receipt.is_null())))
                .limit(2))


def _settle_push(topup: TopUp, payment: Payment, source: str, seq: int | None
                 ) -> Settled | None:
    """Step 2: the push's own payment, reported as a C2B payment: it settles that top-up
    once (or fills in the receipt of a credit made on STK Query's word). None when the top-up
    cannot take it after all (it failed meanwhile), and the rule goes on."""
    phone = payment.phone if payment.phone and _WHOLE_PHONE.fullmatch(payment.phone) else None
    outcome = _credit_in_a_savepoint(topup.id, payment, source, phone)
    if outcome == "credited":
        record_event(topup.id, "paid_by_reference", receipt=payment.receipt, source=source,
                     bill_ref_number=payment.bill_ref, c2b_confirmation=seq)
    if outcome in ("credited", "receipt_filled", "duplicate"):
        return Settled(outcome, topup.id)
    if outcome == "receipt_conflict":   # credited by another road meanwhile
        return _attach_to_its_credit(payment, source, seq)
    if outcome == "receipt_disputed":
        # credited meanwhile with another receipt: this payment is not that push's
        return _keep(payment, seq, source, "its top-up was credited with another receipt")
    return None


class _Undo(Exception):
    def __init__(self, outcome: str):
        super().__init__(outcome)
        self.outcome = outcome


def _credit_in_a_savepoint(topup_id: str, payment: Payment, source: str,
                           phone: str | None) -> str:
    """The one credit path (``settlement.credit_topup``) for a top-up known by its id, in a
    savepoint: what it wrote is undone when the unique indexes refuse the receipt
    (``receipt_conflict``), or when nothing credits it this receipt (a top-up that failed
    meanwhile: ``failed_topup``)."""
    try:
        with write_transaction():
            outcome = settlement.credit_topup(topup_id, amount_cents=payment.amount_cents,
                                              receipt=payment.receipt, phone=phone,
                                              source=source)
            if outcome == "duplicate" and not LedgerEntry.select().where(
                    LedgerEntry.mpesa_receipt == payment.receipt).exists():
                raise _Undo("failed_topup")
            return outcome
    except pw.IntegrityError:
        return "receipt_conflict"
    except _Undo as undo:
        return undo.outcome


def _credit_account(account_id: str, account_number: str, payment: Payment,
                    source: str) -> tuple[str, str | None]:
    """Step 3: a top-up with channel ``c2b`` for the account, credited what M-Pesa confirmed;
    the top-up goes with its credit if the unique indexes refuse it (a savepoint)."""
    now = utcnow()
    try:
        with write_transaction():
            topup = TopUp.create(
                id=new_id("tu"), account=account_id, amount=payment.amount_cents // 100,
                phone=payment.phone or "", reference=account_number, channel=C2B,
                push_state=PUSH_NONE, created_at=now, updated_at=now)
            record_event(topup.id, "paid", source=source, receipt=payment.receipt,
                         bill_ref_number=payment.bill_ref, phone=mask(payment.phone),
                         amount_cents=payment.amount_cents)
            outcome = _credit_in_a_savepoint(topup.id, payment, source, None)
            if outcome != "credited":
                raise _Undo(outcome)
            return outcome, topup.id
    except _Undo as undo:
        return undo.outcome, None


def _keep(payment: Payment, seq: int | None, source: str, reason: str) -> Settled:
    """Step 4: kept as an orphan payment, once (the unique index on its receipt). Unless its
    receipt was credited by another road since step 1 looked (that credit also took its top-up
    out of step 2's candidates): then it attaches to that credit. A credit committed after
    this look is the sweep's (``orphans.resolve_credited``)."""
    attached = _attach_to_its_credit(payment, source, seq)
    if attached is not None:
        return attached
    (OrphanPayment.insert(checkout_request_id=None, mpesa_receipt=payment.receipt,
                          amount_cents=payment.amount_cents, phone=payment.phone,
                          bill_ref_number=payment.bill_ref, reason=reason[:200],
                          c2b_confirmation=seq, created_at=utcnow())
     .on_conflict_ignore().execute())
    return Settled("orphan", None)
