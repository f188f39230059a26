"""Reconciliation: an organisation-portal statement held against the ledger (contract §5).

No Flask, no Dramatiq. ``run(statement, …)`` finds, optionally applies, records the run, and
returns the report (a JSON-ready dict)::

    statement = ledger.statement.read_file("statement.csv")    # or MalformedStatement
    report = reconcile.run(statement, since=None, until=None, apply=False)

How a statement payment is matched, in this order (each step only sees what earlier steps
left; a row or a ledger item is claimed once; :class:`Matcher` has a method for each):

1. by M-Pesa receipt: the ledger entry that carries it (callback credits, and query credits
   whose receipt a later callback filled in);
2. by receipt to an orphan payment (a success callback no top-up knew, or a paybill payment
   to an account number nobody has): paid, not credited;
2b. a paybill payment (C2B) by its ``A/C No.``: an account number an account has (and no open
   push has that AccountReference): paid, not credited, to that account;
3. by phone, amount and time (``window`` either side of the top-up's push) to a credit
   without a receipt (credited on STK Query's word, which carries none);
4. the same to an ``unknown`` or ``pending`` top-up: paid, not credited;
5. by phone and time only, to a receipt-less credit (the amounts differ) or an open top-up;
6. otherwise the payment belongs to nothing we can credit (a receipt-less orphan payment, or
   a failed top-up, is named if one fits); a paybill payment (Reason Type ``Pay Bill``) with
   an ``A/C No.`` no account has is to be kept as an orphan payment, for an operator.

A payment matched by receipt to a paybill credit carries the account it credited and the
``A/C No.``; one whose ``A/C No.`` names another account is reported (*accounts differ*).

Then the ledger's side, for the period: credits not on the statement (a receipt-less credit
that duplicates a matched payment is a *duplicate in the ledger*), orphan payments the
statement does not show (forged callbacks look like this), and ``unknown`` top-ups it does
not show (no money moved; they stay ``unknown``: only Daraja's word fails a top-up).

``apply=True`` settles only what the statement proves and nothing else can dispute:

- an ``unknown`` top-up matched by phone, amount and time, unambiguously (one top-up fits the
  payment and one payment fits the top-up), is credited through ``settle_success`` with the
  statement's receipt (source ``statement``);
- an orphan payment (receipt, amount on the statement) is credited to the account whose
  top-up claims it: the ``unknown`` top-up holding its CheckoutRequestID, or the one
  ``unknown`` top-up whose push answer was lost (no CheckoutRequestID) with the same phone,
  amount and time, which is then given the orphan's CheckoutRequestID in the same
  transaction. An orphan no top-up claims has no account to credit: it is reported only.

- a paybill payment (step 2b) is credited to the account its ``A/C No.`` names, and one that
  names no account is kept as an orphan payment, both by the confirmation's own path
  (``ledger.c2b.settle``, source ``statement``): a receipt credited meanwhile by any road
  credits nothing more.

Everything else is reported only: amounts that differ, pending top-ups (their callback or
query may still come), failed top-ups that were paid (Daraja said no, the statement says
yes: a person decides), duplicates. Every credit is behind the ledger's unique indexes, so a
second run (or two at once) credits nothing more.
"""
from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field

import peewee as pw

from ledger import accounts, c2b, events, pages, settlement, topups
from ledger.db import write_transaction
from ledger.ids import new_id
from ledger.models import (
    C2B, FAILED, PENDING, SUCCEEDED, UNKNOWN, LedgerEntry, OrphanPayment, Reconciliation, TopUp,
    utcnow,
)
from ledger.phones import mask
from ledger.statement import (  # noqa: F401  (re-exported: the reconciliation's reader)
    CHARGE, EAT, NOT_COMPLETED, OTHER, PAYMENT, MalformedStatement, Statement, StatementRow,
    parse, phone_matches, read_file,
)

DEFAULT_WINDOW = dt.timedelta(minutes=10)
EDGE = dt.timedelta(minutes=1)    # the default period: the statement's span, this much wider
# A top-up is pushed soon after it is created; a generous margin when selecting by created_at.
PUSH_DELAY_MARGIN = dt.timedelta(hours=1)
CHUNK = 500


# --- helpers ---------------------------------------------------------------------------------

def iso(when: dt.datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") + "Z" if when else None


def topup_time(topup: TopUp) -> dt.datetime:
    """When the customer was prompted: the payment's time is close after it."""
    return topup.pushed_at or topup.push_started_at or topup.created_at


def credit_time(entry: LedgerEntry) -> dt.datetime:
    return topup_time(entry.topup) if entry.topup_id else entry.created_at


def _row(row: StatementRow) -> dict:
    return {"receipt": row.receipt, "line": row.line, "completed_at": iso(row.completed_at),
            "amount_cents": row.paid_in_cents, "phone": mask(row.phone)}


def _charge(row: StatementRow) -> dict:
    return {"receipt": row.receipt, "line": row.line, "linked_to": row.linked_to,
            "paid_in_cents": row.paid_in_cents, "withdrawn_cents": row.withdrawn_cents,
            "reason_type": row.reason_type}


def _topup(topup: TopUp) -> dict:
    return {"id": topup.id, "account": topup.account_id, "status": topup.status,
            "amount_cents": topup.amount * 100, "phone": mask(topup.phone),
            "checkout_request_id": topup.checkout_request_id, "pushed_at": iso(topup_time(topup))}


def _orphan(orphan: OrphanPayment) -> dict:
    return {"checkout_request_id": orphan.checkout_request_id, "receipt": orphan.mpesa_receipt,
            "amount_cents": orphan.amount_cents, "phone": mask(orphan.phone),
            "received_at": iso(orphan.created_at), "resolved_topup": orphan.resolved_topup_id,
            "bill_ref_number": orphan.bill_ref_number}


def is_paybill(row: StatementRow) -> bool:
    """A payment the customer made from the phone's menu (C2B: Reason Type ``Pay Bill``), not
    one a push prompted (``Pay Bill Online``)."""
    reason = (row.reason_type or "").lower()
    return "pay bill" in reason and "online" not in reason


def _entry(entry: LedgerEntry) -> dict:
    return {"ledger_entry": entry.id, "topup": entry.topup_id,
            "account": entry.topup.account_id if entry.topup_id else None,
            "receipt": entry.mpesa_receipt, "amount_cents": entry.amount_cents,
            "source": entry.source, "phone": mask(entry.topup.phone) if entry.topup_id else None,
            "at": iso(credit_time(entry))}


def _chunks(items, size=CHUNK):
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- the period ------------------------------------------------------------------------------

def period(statement: Statement, since: dt.datetime | None,
           until: dt.datetime | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """[since, until) in naive UTC; by default the span of the statement's own rows, a minute
    wider either side (its times are whole seconds, and its clock is not ours)."""
    times = [row.completed_at for row in statement.rows]
    if since is None and times:
        since = min(times) - EDGE
    if until is None and times:
        until = max(times) + EDGE
    return since, until


def _in(when: dt.datetime, start, end) -> bool:
    return (start is None or when >= start) and (end is None or when < end)


# --- finding ---------------------------------------------------------------------------------

class _ByPhone:
    """Ledger items by phone, for statement phones (a masked one is matched by a scan)."""

    def __init__(self, items, phone_of):
        self.items, self.phone_of = items, phone_of
        self.index: dict[str, list] = {}
        for item in items:
            self.index.setdefault(phone_of(item) or "", []).append(item)
        self.masked = [(key, found) for key, found in self.index.items() if "*" in key]

    def of(self, statement_phone: str | None) -> list:
        if not statement_phone:
            return []
        if "*" in statement_phone:
            return [i for i in self.items if phone_matches(statement_phone, self.phone_of(i))]
        return self.index.get(statement_phone, [])

    def of_ledger_phone(self, phone: str) -> list:
        """Statement rows (indexed by their phone) that a ledger phone matches."""
        return self.index.get(phone, []) + [i for key, found in self.masked
                                            if phone_matches(key, phone) for i in found]


@dataclass
class Plan:
    """One settlement --apply may make: a top-up's (``topup``), or a paybill payment's
    (``c2b``: credited to ``account_id``, or kept as an orphan when that is None)."""
    row: StatementRow
    topup_id: str | None
    checkout_request_id: str | None       # None: the top-up has none; link the orphan's
    orphan_checkout_request_id: str | None = None
    kind: str = "topup"
    account_id: str | None = None


@dataclass
class Findings:
    statement: Statement
    since: dt.datetime | None
    until: dt.datetime | None
    window: dt.timedelta
    counts: dict = field(default_factory=dict)
    matched: list = field(default_factory=list)
    paid_not_credited: list = field(default_factory=list)
    credited_not_on_statement: list = field(default_factory=list)
    amounts_differ: list = field(default_factory=list)
    accounts_differ: list = field(default_factory=list)
    duplicates_statement: list = field(default_factory=list)
    duplicates_ledger: list = field(default_factory=list)
    orphans_not_on_statement: list = field(default_factory=list)
    unknown_not_on_statement: list = field(default_factory=list)
    charges: list = field(default_factory=list)
    plans: list = field(default_factory=list)        # what --apply may settle

    def summary(self) -> dict:
        return {"matched": len(self.matched), "paid_not_credited": len(self.paid_not_credited),
                "credited_not_on_statement": len(self.credited_not_on_statement),
                "amounts_differ": len(self.amounts_differ),
                "accounts_differ": len(self.accounts_differ),
                "duplicates_on_statement": len(self.duplicates_statement),
                "duplicates_in_ledger": len(self.duplicates_ledger),
                "orphans_not_on_statement": len(self.orphans_not_on_statement),
                "unknown_not_on_statement": len(self.unknown_not_on_statement),
                "safe_to_apply": len(self.plans)}


def find(statement: Statement, *, since: dt.datetime | None = None,
         until: dt.datetime | None = None, window: dt.timedelta = DEFAULT_WINDOW) -> Findings:
    """Hold ``statement`` against the ledger; reads only."""
    return Matcher(statement, since=since, until=until, window=window).find()


class Matcher:
    """One statement held against the ledger for one period, in the steps the module's
    docstring lists.

    Each step is offered the statement payments still unmatched, in time order; a payment it
    takes leaves, and what the step claimed for it (a credit, a top-up, an orphan payment) is
    not offered again. A Matcher finds once: its claims are the state of that one pass.
    """

    def __init__(self, statement: Statement, *, since: dt.datetime | None = None,
                 until: dt.datetime | None = None, window: dt.timedelta = DEFAULT_WINDOW):
        self.statement, self.window = statement, window
        self.start, self.end = period(statement, since, until)
        self.found = Findings(statement, self.start, self.end, window)
        self.claimed_entries: set[str] = set()
        self.claimed_topups: set[str] = set()
        self.claimed_orphans: set[int] = set()
        self.credited_rows: list[StatementRow] = []   # matched to a credit (amounts may differ)
        self.left: list[StatementRow] = []            # the payments no step has taken yet
        self.finding_started = False

    def find(self) -> Findings:
        """The statement's side, the ledger's near it, the six steps, then what the ledger
        holds for the period that no payment took."""
        if self.finding_started:
            raise RuntimeError("a Matcher finds once: its claims belong to that pass")
        self.finding_started = True
        self.left = self._payments_to_match()
        self._load_the_ledger()
        self._match(self._by_receipt)
        self._match(self._to_an_orphan_by_receipt)
        self._match(self._to_an_account_by_its_number)
        self._match(self._to_a_receiptless_credit)
        self._count_open_topups_that_fit()
        self._match(self._to_an_open_topup)
        self._match(self._by_phone_and_time)
        self._match(self._to_nothing_creditable)
        self._credits_not_on_the_statement()
        self._orphans_not_on_the_statement()
        self._unknown_not_on_the_statement()
        return self.found

    # --- the statement's side ------------------------------------------------------------------

    def _payments_to_match(self) -> list[StatementRow]:
        """The period's payments in time order, each receipt once."""
        in_period = [r for r in self.statement.rows if _in(r.completed_at, self.start, self.end)]
        payments = sorted((r for r in in_period if r.kind == PAYMENT),
                          key=lambda r: (r.completed_at, r.line))
        self.every_receipt = {r.receipt for r in self.statement.rows if r.kind == PAYMENT}
        self._count_the_statement(in_period, payments)
        return self._first_row_of_each_receipt(payments)

    def _count_the_statement(self, in_period: list[StatementRow],
                             payments: list[StatementRow]) -> None:
        """The statement's rows by kind, and its charges as they are."""
        rows = self.statement.rows
        self.found.counts = {"rows": len(rows), "in_period": len(in_period),
                             "payments": len(payments),
                             "charges": sum(r.kind == CHARGE for r in in_period),
                             "not_completed": sum(r.kind == NOT_COMPLETED for r in in_period),
                             "other": sum(r.kind == OTHER for r in in_period),
                             "outside_period": len(rows) - len(in_period)}
        self.found.charges = [_charge(r) for r in in_period if r.kind == CHARGE]

    def _first_row_of_each_receipt(self, payments: list[StatementRow]) -> list[StatementRow]:
        """A receipt on more than one row is a duplicate on the statement: its first row (by
        line) is the one matched, the others are reported."""
        first: dict[str, StatementRow] = {}
        repeated: dict[str, list[int]] = {}
        for row in sorted(payments, key=lambda r: r.line):
            if row.receipt in first:
                repeated.setdefault(row.receipt, [first[row.receipt].line]).append(row.line)
            else:
                first[row.receipt] = row
        self.found.duplicates_statement = [{"receipt": receipt, "lines": lines}
                                           for receipt, lines in repeated.items()]
        return [row for row in payments if first[row.receipt] is row]

    # --- the ledger's side, read once ----------------------------------------------------------

    def _load_the_ledger(self) -> None:
        """What the payments' receipts name, at any time; then what lies near the period."""
        self._load_by_receipt([row.receipt for row in self.left])
        self._load_near_the_period()
        self._index_by_phone()

    def _load_near_the_period(self) -> None:
        """Credits, open top-ups and unresolved orphan payments within ``window`` of the
        period, by when the customer was prompted (a top-up by when it was pushed)."""
        lo = self.start - self.window if self.start else None
        hi = self.end + self.window if self.end else None
        created_lo = lo - PUSH_DELAY_MARGIN if lo else None
        self.credits = [e for e in self._credits_created(created_lo, hi)
                        if _in(credit_time(e), lo, hi)]
        self.open_topups = [t for t in self._open_topups_created(created_lo, hi)
                            if _in(topup_time(t), lo, hi)]
        self.near_orphans = list(self._unresolved_orphans_received(lo, hi))

    def _index_by_phone(self) -> None:
        """What steps 3 to 6 look up by the statement's phone."""
        self.receiptless_credits = _ByPhone(
            [e for e in self.credits if e.mpesa_receipt is None and e.topup_id],
            lambda e: e.topup.phone)
        self.settleable_topups = _ByPhone(
            [t for t in self.open_topups if t.status in (PENDING, UNKNOWN)], lambda t: t.phone)
        self.failed_topups = _ByPhone(
            [t for t in self.open_topups if t.status == FAILED], lambda t: t.phone)
        self.receiptless_orphans = _ByPhone(
            [o for o in self.near_orphans if o.mpesa_receipt is None], lambda o: o.phone)

    def _load_by_receipt(self, receipts: list[str]) -> None:
        """At any time: a receipt names its payment however long ago it was credited."""
        self.entries_by_receipt: dict[str, LedgerEntry] = {}
        self.orphans_by_receipt: dict[str, OrphanPayment] = {}
        for chunk in _chunks(receipts):
            for entry in (LedgerEntry.select(LedgerEntry, TopUp)
                          .join(TopUp, pw.JOIN.LEFT_OUTER, on=(LedgerEntry.topup == TopUp.id))
                          .where(LedgerEntry.mpesa_receipt.in_(chunk))):
                self.entries_by_receipt[entry.mpesa_receipt] = entry
            for orphan in OrphanPayment.select().where(OrphanPayment.mpesa_receipt.in_(chunk)):
                self.orphans_by_receipt[orphan.mpesa_receipt] = orphan

    @staticmethod
    def _credits_created(created_lo: dt.datetime | None, hi: dt.datetime | None):
        """Top-up credits whose top-up (or, without one, the entry) was created in the span."""
        query = (LedgerEntry.select(LedgerEntry, TopUp)
                 .join(TopUp, pw.JOIN.LEFT_OUTER, on=(LedgerEntry.topup == TopUp.id))
                 .where((LedgerEntry.type == "top_up") & (LedgerEntry.amount_cents > 0)))
        if created_lo is not None:
            query = query.where(
                (TopUp.created_at >= created_lo) | (LedgerEntry.created_at >= created_lo))
        if hi is not None:
            query = query.where(
                (TopUp.created_at < hi) | (TopUp.id.is_null() & (LedgerEntry.created_at < hi)))
        return query

    @staticmethod
    def _open_topups_created(created_lo: dt.datetime | None, hi: dt.datetime | None):
        """Top-ups without a receipt that a payment may still belong to: pending, unknown, and
        failed (named when the statement shows them paid)."""
        query = TopUp.select().where(TopUp.status.in_((PENDING, UNKNOWN, FAILED))
                                     & TopUp.mpesa_receipt.is_null())
        if created_lo is not None:
            query = query.where(TopUp.created_at >= created_lo)
        if hi is not None:
            query = query.where(TopUp.created_at < hi)
        return query

    @staticmethod
    def _unresolved_orphans_received(lo: dt.datetime | None, hi: dt.datetime | None):
        query = OrphanPayment.select().where(OrphanPayment.resolved_topup.is_null())
        if lo is not None:
            query = query.where(OrphanPayment.created_at >= lo)
        if hi is not None:
            query = query.where(OrphanPayment.created_at < hi)
        return query

    # --- what every step shares ----------------------------------------------------------------

    def _match(self, step) -> None:
        """Offer every payment still left to ``step``; those it takes (True) leave."""
        self.left = [row for row in self.left if not step(row)]

    def _close(self, row: StatementRow, when: dt.datetime) -> bool:
        return abs(when - row.completed_at) <= self.window

    @staticmethod
    def _nearest(row: StatementRow, candidates: list, when_of):
        return min(candidates, key=lambda c: abs(when_of(c) - row.completed_at))

    def _claim_nearest_topup(self, row: StatementRow, fits: list[TopUp]) -> TopUp:
        topup = self._nearest(row, fits, topup_time)
        self.claimed_topups.add(topup.id)
        return topup

    def _credit_matched(self, row: StatementRow, entry: LedgerEntry, by: str) -> None:
        """``row`` is the payment ``entry`` credited: matched, or reported if the amounts
        differ (never changed: a person decides)."""
        self.claimed_entries.add(entry.id)
        self.credited_rows.append(row)
        item = {**_row(row), "by": by, "ledger_entry": entry.id, "topup": entry.topup_id}
        if entry.topup_id and entry.topup.channel == C2B:
            self._paybill_credit_matched(row, entry, item)
        if entry.amount_cents == row.paid_in_cents:
            self.found.matched.append(item)
            return
        self.found.amounts_differ.append({
            **item, "account": entry.topup.account_id if entry.topup_id else None,
            "ledger_receipt": entry.mpesa_receipt, "source": entry.source,
            "statement_amount_cents": row.paid_in_cents,
            "ledger_amount_cents": entry.amount_cents})

    def _paybill_credit_matched(self, row: StatementRow, entry: LedgerEntry, item: dict) -> None:
        """A paybill credit: the account it credited and the ``A/C No.``; a number naming
        another account is reported (a person decides)."""
        item.update(account=entry.topup.account_id, account_no=row.account_no)
        named = accounts.find_by_account_number(row.account_no)
        if named is not None and named.id != entry.topup.account_id:
            self.found.accounts_differ.append({**item, "account_no_names": named.id})

    # --- 1, 2: by receipt ----------------------------------------------------------------------

    def _by_receipt(self, row: StatementRow) -> bool:
        """The ledger entry that carries the payment's receipt."""
        entry = self.entries_by_receipt.get(row.receipt)
        if entry is not None:
            self._credit_matched(row, entry, "receipt")
        return entry is not None

    def _to_an_orphan_by_receipt(self, row: StatementRow) -> bool:
        orphan = self.orphans_by_receipt.get(row.receipt)
        if orphan is None:
            return False
        self._paid_to_orphan(row, orphan)
        return True

    # --- 2b: a paybill payment by its account number ---------------------------------------------

    def _to_an_account_by_its_number(self, row: StatementRow) -> bool:
        """A paybill payment whose ``A/C No.`` is an account's number: paid, not credited, to
        that account (unless an open push has that AccountReference: the steps below)."""
        account = accounts.find_by_account_number(row.account_no)
        if account is None or self._an_open_push_named(row.account_no):
            return False
        self.found.paid_not_credited.append({
            **_row(row), "by": "account_number",
            "belongs_to": {"account": account.id, "account_number": account.account_number},
            "action": "apply"})
        self.found.plans.append(Plan(row, None, None, kind="c2b", account_id=account.id))
        return True

    @staticmethod
    def _an_open_push_named(reference: str) -> bool:
        return TopUp.select().where(TopUp.reference.in_({reference, reference.upper()})
                                    & TopUp.status.in_((PENDING, UNKNOWN))).exists()

    # --- 3, 4, 5: by phone and time ------------------------------------------------------------

    def _to_a_receiptless_credit(self, row: StatementRow, same_amount: bool = True) -> bool:
        """A credit settled on STK Query's word (no receipt) for this phone, near in time."""
        fits = [e for e in self.receiptless_credits.of(row.phone)
                if e.id not in self.claimed_entries
                and (not same_amount or e.amount_cents == row.paid_in_cents)
                and self._close(row, credit_time(e))]
        if fits:
            self._credit_matched(row, self._nearest(row, fits, credit_time),
                                 "phone_amount_time" if same_amount else "phone_time")
        return bool(fits)

    def _count_open_topups_that_fit(self) -> None:
        """Before step 4 takes any: which open top-ups fit each payment left by phone, amount
        and time, and how many payments each top-up fits. A settlement is safe only when
        one top-up fits the payment and one payment fits the top-up."""
        self.open_fits = {
            row.line: [t for t in self.settleable_topups.of(row.phone)
                       if t.id not in self.claimed_topups
                       and t.amount * 100 == row.paid_in_cents and self._close(row, topup_time(t))]
            for row in self.left}
        self.rows_per_open_topup = Counter(t.id for fits in self.open_fits.values() for t in fits)

    def _to_an_open_topup(self, row: StatementRow) -> bool:
        """An ``unknown`` or ``pending`` top-up of this phone and amount, near in time."""
        fits = [t for t in self.open_fits[row.line] if t.id not in self.claimed_topups]
        if not fits:
            return False
        topup = self._claim_nearest_topup(row, fits)
        unambiguous = (len(self.open_fits[row.line]) == 1
                       and self.rows_per_open_topup[topup.id] == 1)
        self._paid_to_topup(row, topup, "phone_amount_time", unambiguous)
        return True

    def _by_phone_and_time(self, row: StatementRow) -> bool:
        """The amounts differ: a receipt-less credit, else an open top-up."""
        return (self._to_a_receiptless_credit(row, same_amount=False)
                or self._to_an_open_topup_of_another_amount(row))

    def _to_an_open_topup_of_another_amount(self, row: StatementRow) -> bool:
        """Never settled: a top-up of another amount is only named."""
        fits = [t for t in self.settleable_topups.of(row.phone) if t.id not in self.claimed_topups
                and self._close(row, topup_time(t))]
        if fits:
            self._paid_to_topup(row, self._claim_nearest_topup(row, fits), "phone_time", False)
        return bool(fits)

    def _paid_to_topup(self, row: StatementRow, topup: TopUp, by: str,
                       unambiguous: bool) -> None:
        """Paid, not credited: planned for --apply only when nothing can dispute it, else
        reported with the reason a person must decide (or wait)."""
        item = {**_row(row), "by": by, "belongs_to": {"topup": _topup(topup)},
                "action": "reported"}
        if topup.status == PENDING:
            item["reason"] = ("the top-up is still pending: its callback or query may settle "
                              "it; run again once it has settled or become unknown")
        elif by != "phone_amount_time":
            item["reason"] = (f"the amounts differ (statement {row.paid_in_cents} cents, top-up "
                              f"{topup.amount * 100}): a person must decide")
        elif not unambiguous:
            item["reason"] = "more than one top-up or payment fits: a person must decide"
        elif topup.checkout_request_id is None:
            item["reason"] = ("the push's answer was lost (no CheckoutRequestID) and no orphan "
                              "payment names it: credit it by hand")
        else:
            item["action"] = "apply"
            self.found.plans.append(Plan(row, topup.id, topup.checkout_request_id))
        self.found.paid_not_credited.append(item)

    # --- 6: nothing we can credit --------------------------------------------------------------

    def _to_nothing_creditable(self, row: StatementRow) -> bool:
        """Takes every payment left: a receipt-less orphan payment, or a failed top-up, is
        named if one fits."""
        return (self._to_a_receiptless_orphan(row) or self._to_a_failed_topup(row)
                or self._to_nothing(row))

    def _to_a_receiptless_orphan(self, row: StatementRow) -> bool:
        orphans = [o for o in self.receiptless_orphans.of(row.phone)
                   if o.seq not in self.claimed_orphans
                   and o.amount_cents == row.paid_in_cents and self._close(row, o.created_at)]
        if orphans:
            self._paid_to_orphan(row, self._nearest(row, orphans, lambda o: o.created_at))
        return bool(orphans)

    def _to_a_failed_topup(self, row: StatementRow) -> bool:
        fits = [t for t in self.failed_topups.of(row.phone) if t.id not in self.claimed_topups
                and self._close(row, topup_time(t))]
        if fits:
            self.found.paid_not_credited.append({
                **_row(row), "belongs_to": {"topup": _topup(self._claim_nearest_topup(row, fits))},
                "action": "reported",
                "reason": "the top-up failed on Daraja's word, yet the statement shows a "
                          "payment that fits it: a person must decide"})
        return bool(fits)

    def _to_nothing(self, row: StatementRow) -> bool:
        if row.account_no and is_paybill(row):
            self.found.paid_not_credited.append({
                **_row(row), "belongs_to": None, "action": "apply",
                "reason": f"a paybill payment to account number {row.account_no!r}, which no "
                          "account has: --apply keeps it as an orphan payment for an operator"})
            self.found.plans.append(Plan(row, None, None, kind="c2b"))
            return True
        self.found.paid_not_credited.append({
            **_row(row), "belongs_to": None, "action": "reported",
            "reason": "no top-up, credit or orphan payment fits this payment"})
        return True

    # --- a payment an orphan payment holds (steps 2 and 6) -------------------------------------

    def _paid_to_orphan(self, row: StatementRow, orphan: OrphanPayment) -> None:
        """A statement payment whose receipt (or phone, amount, time) an orphan payment holds:
        its top-up is the one holding the orphan's CheckoutRequestID, else a lost push's."""
        self.claimed_orphans.add(orphan.seq)
        if orphan.checkout_request_id is None:
            # a paybill payment to an account number nobody has: no top-up can claim it
            self.found.paid_not_credited.append({
                **_row(row), "belongs_to": {"orphan": _orphan(orphan)}, "action": "reported",
                "reason": f"a paybill payment to account number {orphan.bill_ref_number!r}, "
                          "which no account has: kept as an orphan payment for an operator"})
            return
        owner = TopUp.get_or_none(TopUp.checkout_request_id == orphan.checkout_request_id)
        if (owner is not None and owner.status == SUCCEEDED
                and self._to_its_query_credit(row, owner)):
            return
        item = {**_row(row), "belongs_to": {"orphan": _orphan(orphan)}, "action": "reported"}
        amounts_agree = orphan.amount_cents in (None, row.paid_in_cents)
        if owner is not None:
            self._orphan_of_its_topup(item, row, owner, amounts_agree)
        else:
            self._orphan_of_a_lost_push(item, row, orphan, amounts_agree)
        self.found.paid_not_credited.append(item)

    def _to_its_query_credit(self, row: StatementRow, owner: TopUp) -> bool:
        """The orphan's top-up was credited on the query's word (no receipt), and that credit
        is not matched yet: this payment is the one it credited."""
        entry = next((e for e in self.credits if e.topup_id == owner.id), None) or \
            LedgerEntry.select(LedgerEntry, TopUp).join(TopUp).where(
                LedgerEntry.topup == owner.id).first()
        if entry is None or entry.id in self.claimed_entries:
            return False
        self.claimed_topups.add(owner.id)
        self._credit_matched(row, entry, "orphan_checkout_request_id")
        return True

    def _orphan_of_its_topup(self, item: dict, row: StatementRow, owner: TopUp,
                             amounts_agree: bool) -> None:
        """The top-up holding the orphan's CheckoutRequestID: only an ``unknown`` one of the
        same amount is settled."""
        self.claimed_topups.add(owner.id)
        item["belongs_to"]["topup"] = _topup(owner)
        if owner.status == SUCCEEDED:
            item["reason"] = (f"its top-up was credited from another payment (receipt "
                              f"{owner.mpesa_receipt}): a person must decide")
        elif owner.status == FAILED:
            item["reason"] = ("the top-up holding this CheckoutRequestID failed on Daraja's "
                              "word, yet it was paid: a person must decide")
        elif owner.status == PENDING:
            item["reason"] = "its top-up is still pending: run again once it has settled"
        elif owner.status == UNKNOWN and amounts_agree and owner.amount * 100 == row.paid_in_cents:
            item["action"] = "apply"
            self.found.plans.append(Plan(row, owner.id, owner.checkout_request_id))
        else:
            item["reason"] = "the amounts differ: a person must decide"

    def _orphan_of_a_lost_push(self, item: dict, row: StatementRow, orphan: OrphanPayment,
                               amounts_agree: bool) -> None:
        """A push whose answer was lost: its top-up has no CheckoutRequestID and "claims" the
        orphan by phone, amount and time; one such top-up, or none is settled."""
        lost = [t for t in self.open_topups if t.id not in self.claimed_topups
                and t.status in (PENDING, UNKNOWN) and t.checkout_request_id is None
                and phone_matches(row.phone, t.phone) and t.amount * 100 == row.paid_in_cents
                and self._close(row, topup_time(t))]
        if not lost:
            item["reason"] = ("no top-up claims this orphan payment, so no account can be "
                              "determined: it is reported only")
        elif len(lost) > 1:
            item["reason"] = "more than one top-up could claim this orphan payment"
        else:
            topup = lost[0]
            self.claimed_topups.add(topup.id)
            item["belongs_to"]["topup"] = _topup(topup)
            if topup.status == PENDING:
                item["reason"] = "its top-up is still pending: run again once it is unknown"
            elif not amounts_agree:
                item["reason"] = "the orphan's amount differs from the statement's"
            else:
                item["action"] = "apply"
                self.found.plans.append(Plan(row, topup.id, None, orphan.checkout_request_id))

    # --- the ledger's side, for the period -----------------------------------------------------

    def _credits_not_on_the_statement(self) -> None:
        """Credits in the period no payment took; a receipt that is on the statement, outside
        the period asked for, is no finding."""
        self.credited = _ByPhone(self.credited_rows, lambda r: r.phone)
        for entry in self.credits:
            if entry.id in self.claimed_entries or not _in(credit_time(entry), self.start,
                                                           self.end):
                continue
            if entry.mpesa_receipt and entry.mpesa_receipt in self.every_receipt:
                continue
            twin = self._credited_twin(entry)
            if twin is not None:
                self.found.duplicates_ledger.append({**_entry(entry), "duplicate_of": twin.receipt,
                                                     "line": twin.line})
            else:
                self.found.credited_not_on_statement.append(_entry(entry))

    def _credited_twin(self, entry: LedgerEntry) -> StatementRow | None:
        """The matched payment a receipt-less credit credits a second time, if any."""
        if entry.mpesa_receipt is not None or not entry.topup_id:
            return None
        return next((r for r in self.credited.of_ledger_phone(entry.topup.phone)
                     if r.paid_in_cents == entry.amount_cents
                     and self._close(r, credit_time(entry))), None)

    def _orphans_not_on_the_statement(self) -> None:
        """Orphan payments in the period no payment took: forged callbacks look like this."""
        for orphan in self.near_orphans:
            if orphan.seq in self.claimed_orphans or not _in(orphan.created_at, self.start,
                                                             self.end):
                continue
            if orphan.mpesa_receipt and orphan.mpesa_receipt in self.every_receipt:
                continue
            self.found.orphans_not_on_statement.append(_orphan(orphan))

    def _unknown_not_on_the_statement(self) -> None:
        """No money moved for these; they stay ``unknown`` (only Daraja's word fails one)."""
        for topup in self.open_topups:
            if (topup.status == UNKNOWN and topup.id not in self.claimed_topups
                    and _in(topup_time(topup), self.start, self.end)):
                self.found.unknown_not_on_statement.append(_topup(topup))


# --- applying --------------------------------------------------------------------------------

class _Undo(Exception):
    def __init__(self, outcome: str):
        self.outcome = outcome


def apply(found: Findings, run_id: str) -> list[dict]:
    """Settle every safe plan, each in its own transaction. Returns what each did."""
    done = []
    for plan in found.plans:
        if plan.kind == "c2b":
            outcome, topup_id = _apply_paybill(plan, run_id)
        else:
            outcome, topup_id = _apply_one(plan, run_id), plan.topup_id
        topup = TopUp.get_or_none(TopUp.id == topup_id) if topup_id else None
        done.append({"receipt": plan.row.receipt, "line": plan.row.line, "topup": topup_id,
                     "account": topup.account_id if topup else plan.account_id,
                     "amount_cents": plan.row.paid_in_cents,
                     "orphan": plan.orphan_checkout_request_id, "outcome": outcome})
        kept = plan.kind == "c2b" and plan.account_id is None and outcome == "orphan"
        for item in found.paid_not_credited:
            if item["receipt"] == plan.row.receipt and item["line"] == plan.row.line:
                item["action"] = ("credited" if outcome == "credited"
                                  else "kept_as_orphan" if kept else "not_applied")
                if outcome != "credited" and not kept:
                    item["reason"] = f"settling it gave {outcome!r}"
    return done


def _apply_paybill(plan: Plan, run_id: str) -> tuple[str, str | None]:
    """A paybill payment the statement proves: settled by the confirmation's path."""
    row = plan.row
    payment = c2b.Payment(receipt=row.receipt, amount_cents=row.paid_in_cents,
                          bill_ref=row.account_no or "", phone=row.phone,
                          paid_at=row.completed_at)
    with events.publishing(), write_transaction():
        settled = c2b.settle(payment, source=c2b.STATEMENT)
        if settled.outcome == "credited":
            topups.record_event(settled.topup_id, "reconciled", reconciliation=run_id,
                                receipt=row.receipt, statement_line=row.line,
                                outcome=settled.outcome, account_no=row.account_no)
    return settled.outcome, settled.topup_id


def _apply_one(plan: Plan, run_id: str) -> str:
    row = plan.row
    try:
        # publishing(): the wallet.top_up event settle_success writes is announced after
        # this outer transaction commits, and forgotten if it is undone
        with events.publishing(), write_transaction():
            checkout = plan.checkout_request_id
            if checkout is None:
                # the orphan's CheckoutRequestID is the one the lost push answer carried
                try:
                    with write_transaction():   # a savepoint: the unique index may refuse
                        linked = (TopUp.update(checkout_request_id=plan.orphan_checkout_request_id,
                                               updated_at=utcnow())
                                  .where((TopUp.id == plan.topup_id) & (TopUp.status == UNKNOWN)
                                         & TopUp.checkout_request_id.is_null())
                                  .execute())
                except pw.IntegrityError:
                    raise _Undo("checkout_request_id_conflict") from None
                if not linked:
                    raise _Undo("changed_meanwhile")
                checkout = plan.orphan_checkout_request_id
            outcome = settlement.settle_success(checkout, amount_cents=row.paid_in_cents,
                                                receipt=row.receipt, phone=row.phone,
                                                source="statement")
            if outcome not in ("credited", "receipt_filled"):
                raise _Undo(outcome)
            topups.record_event(plan.topup_id, "reconciled", reconciliation=run_id,
                                receipt=row.receipt, statement_line=row.line,
                                outcome=outcome, orphan=plan.orphan_checkout_request_id)
            return outcome
    except _Undo as undo:
        return undo.outcome


# --- running and recording -------------------------------------------------------------------

def run(statement: Statement, *, since: dt.datetime | None = None,
        until: dt.datetime | None = None, window: dt.timedelta = DEFAULT_WINDOW,
        apply_safe: bool = False) -> dict:
    """Find, apply the safe settlements if asked, record the run; the report."""
    found = find(statement, since=since, until=until, window=window)
    run_id = new_id("rc")
    started = utcnow()
    with write_transaction():
        Reconciliation.create(
            id=run_id, started_at=started, statement_name=statement.name[:255],
            statement_sha256=statement.sha256, since=found.since, until=found.until,
            apply=apply_safe, summary=json.dumps(found.summary()), findings="{}", applied="[]")
    applied = apply(found, run_id) if apply_safe else []
    report = build_report(found, run_id=run_id, created_at=started, apply_safe=apply_safe,
                          applied=applied)
    stored = {k: v for k, v in report.items() if k != "matched"}
    with write_transaction():
        (Reconciliation.update(finished_at=utcnow(), summary=json.dumps(report["summary"]),
                               findings=json.dumps(stored), applied=json.dumps(applied),
                               applied_count=sum(a["outcome"] == "credited" for a in applied))
         .where(Reconciliation.id == run_id).execute())
    return report


def build_report(found: Findings, *, run_id: str | None, created_at: dt.datetime | None,
                 apply_safe: bool, applied: list) -> dict:
    summary = found.summary()
    summary["applied"] = sum(a["outcome"] == "credited" for a in applied)
    statement = found.statement
    return {
        "object": "reconciliation", "id": run_id, "created_at": iso(created_at),
        "statement": {"name": statement.name, "sha256": statement.sha256,
                      "lines": statement.lines, **found.counts},
        "period": {"since": iso(found.since), "until": iso(found.until),
                   "window_s": int(found.window.total_seconds())},
        "apply": apply_safe,
        "summary": summary,
        "matched": found.matched,
        "paid_not_credited": found.paid_not_credited,
        "credited_not_on_statement": found.credited_not_on_statement,
        "amounts_differ": found.amounts_differ,
        "accounts_differ": found.accounts_differ,
        "duplicates": {"statement": found.duplicates_statement,
                       "ledger": found.duplicates_ledger},
        "orphans_not_on_statement": found.orphans_not_on_statement,
        "unknown_not_on_statement": found.unknown_not_on_statement,
        "charges": found.charges,
        "applied": applied,
    }


def run_json(run: Reconciliation, *, full: bool = False) -> dict:
    """A recorded run, as ``GET /ops/reconciliations`` shows it."""
    body = {"id": run.id, "object": "reconciliation_run",
            "started_at": iso(run.started_at), "finished_at": iso(run.finished_at),
            "statement": {"name": run.statement_name, "sha256": run.statement_sha256},
            "period": {"since": iso(run.since), "until": iso(run.until)},
            "apply": run.apply, "summary": json.loads(run.summary or "{}"),
            "applied_count": run.applied_count}
    if full:
        body["findings"] = json.loads(run.findings or "{}")
        body["applied"] = json.loads(run.applied or "[]")
    return body


def list_runs(limit: int = 20, starting_after: str | None = None) -> tuple[list, bool] | None:
    """Newest first; None when ``starting_after`` names no run."""
    return pages.newest_first(Reconciliation.select(), Reconciliation, limit=limit,
                              starting_after=starting_after)


# --- the command line's dates ------------------------------------------------------------------

def parse_bound(text: str, *, end: bool = False) -> dt.datetime:
    """``--since`` / ``--until``: ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS]`` in Nairobi time
    (the statement's), or with an offset / ``Z``; naive UTC. A bare date given as an end
    (``--until 2026-02-03``) includes that whole day."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            when = dt.datetime.combine(day + dt.timedelta(days=1 if end else 0), dt.time())
        else:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or a date and time "
                         "(YYYY-MM-DDTHH:MM:SS)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=EAT)
    return when.astimezone(dt.timezone.utc).replace(tzinfo=None)
