"""Reconciliation: an organisation-portal statement held against the ledger (contract §5).

Plain functions, no Flask, no Dramatiq. ``run(statement, …)`` finds, optionally applies,
records the run, and returns the report (a JSON-ready dict)::

    statement = ledger.statement.read_file("statement.csv")    # or MalformedStatement
    report = reconcile.run(statement, since=None, until=None, apply=False)

How a statement payment is matched, in this order (each step only sees what earlier steps
left; a row or a ledger item is claimed once):

1. by M-Pesa receipt: the ledger entry that carries it (callback credits, and query credits
   whose receipt a later callback filled in);
2. by receipt to an orphan payment (a success callback no top-up knew): paid, not credited;
3. by phone, amount and time (``window`` either side of the top-up's push) to a credit
   without a receipt (credited on STK Query's word, which carries none);
4. the same to an ``unknown`` or ``pending`` top-up: paid, not credited;
5. by phone and time only, to a receipt-less credit (the amounts differ) or an open top-up;
6. otherwise the payment belongs to nothing we know (a failed top-up is named if one fits).

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

Everything else is reported only: amounts that differ, pending top-ups (their callback or
query may still come), failed top-ups that were paid (Daraja said no, the statement says
yes: a person decides), duplicates. Every credit is behind the ledger's unique indexes, so a
second run (or two at once) credits nothing more.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

import peewee as pw

from ledger import events, topups
from ledger.db import write_transaction
from ledger.ids import new_id
from ledger.models import (
    FAILED, PENDING, SUCCEEDED, UNKNOWN, LedgerEntry, OrphanPayment, Reconciliation, TopUp,
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


def _topup(topup: TopUp) -> dict:
    return {"id": topup.id, "account": topup.account_id, "status": topup.status,
            "amount_cents": topup.amount * 100, "phone": mask(topup.phone),
            "checkout_request_id": topup.checkout_request_id, "pushed_at": iso(topup_time(topup))}


def _orphan(orphan: OrphanPayment) -> dict:
    return {"checkout_request_id": orphan.checkout_request_id, "receipt": orphan.mpesa_receipt,
            "amount_cents": orphan.amount_cents, "phone": mask(orphan.phone),
            "received_at": iso(orphan.created_at), "resolved_topup": orphan.resolved_topup_id}


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
    """One settlement --apply may make."""
    row: StatementRow
    topup_id: str
    checkout_request_id: str | None       # None: the top-up has none; link the orphan's
    orphan_checkout_request_id: str | None = None


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
                "duplicates_on_statement": len(self.duplicates_statement),
                "duplicates_in_ledger": len(self.duplicates_ledger),
                "orphans_not_on_statement": len(self.orphans_not_on_statement),
                "unknown_not_on_statement": len(self.unknown_not_on_statement),
                "safe_to_apply": len(self.plans)}


def find(statement: Statement, *, since: dt.datetime | None = None,
         until: dt.datetime | None = None, window: dt.timedelta = DEFAULT_WINDOW) -> Findings:
    """Hold ``statement`` against the ledger; reads only."""
    start, end = period(statement, since, until)
    found = Findings(statement, start, end, window)
    in_period = [r for r in statement.rows if _in(r.completed_at, start, end)]
    payments = sorted((r for r in in_period if r.kind == PAYMENT),
                      key=lambda r: (r.completed_at, r.line))
    every_receipt = {r.receipt for r in statement.rows if r.kind == PAYMENT}
    found.counts = {"rows": len(statement.rows), "in_period": len(in_period),
                    "payments": len(payments),
                    "charges": sum(r.kind == CHARGE for r in in_period),
                    "not_completed": sum(r.kind == NOT_COMPLETED for r in in_period),
                    "other": sum(r.kind == OTHER for r in in_period),
                    "outside_period": len(statement.rows) - len(in_period)}
    found.charges = [{"receipt": r.receipt, "line": r.line, "linked_to": r.linked_to,
                      "paid_in_cents": r.paid_in_cents, "withdrawn_cents": r.withdrawn_cents,
                      "reason_type": r.reason_type} for r in in_period if r.kind == CHARGE]

    # duplicates on the statement: the first row of a receipt is the one matched
    first: dict[str, StatementRow] = {}
    repeated: dict[str, list[int]] = {}
    for row in sorted(payments, key=lambda r: r.line):
        if row.receipt in first:
            repeated.setdefault(row.receipt, [first[row.receipt].line]).append(row.line)
        else:
            first[row.receipt] = row
    found.duplicates_statement = [{"receipt": receipt, "lines": lines}
                                  for receipt, lines in repeated.items()]
    rows = [row for row in payments if first[row.receipt] is row]

    # the ledger: by receipt (any time), then what lies near the period
    receipts = [row.receipt for row in rows]
    by_receipt: dict[str, LedgerEntry] = {}
    orphans_by_receipt: dict[str, OrphanPayment] = {}
    for chunk in _chunks(receipts):
        for entry in (LedgerEntry.select(LedgerEntry, TopUp)
                      .join(TopUp, pw.JOIN.LEFT_OUTER, on=(LedgerEntry.topup == TopUp.id))
                      .where(LedgerEntry.mpesa_receipt.in_(chunk))):
            by_receipt[entry.mpesa_receipt] = entry
        for orphan in OrphanPayment.select().where(OrphanPayment.mpesa_receipt.in_(chunk)):
            orphans_by_receipt[orphan.mpesa_receipt] = orphan
    lo = start - window if start else None
    hi = end + window if end else None
    near = lambda when: _in(when, lo, hi)  # noqa: E731
    created_lo = lo - PUSH_DELAY_MARGIN if lo else None

    credits_query = (LedgerEntry.select(LedgerEntry, TopUp)
                     .join(TopUp, pw.JOIN.LEFT_OUTER, on=(LedgerEntry.topup == TopUp.id))
                     .where((LedgerEntry.type == "top_up") & (LedgerEntry.amount_cents > 0)))
    if created_lo is not None:
        credits_query = credits_query.where(
            (TopUp.created_at >= created_lo) | (LedgerEntry.created_at >= created_lo))
    if hi is not None:
        credits_query = credits_query.where(
            (TopUp.created_at < hi) | (TopUp.id.is_null() & (LedgerEntry.created_at < hi)))
    credits = [e for e in credits_query if near(credit_time(e))]
    topups_query = TopUp.select().where(TopUp.status.in_((PENDING, UNKNOWN, FAILED))
                                        & TopUp.mpesa_receipt.is_null())
    if created_lo is not None:
        topups_query = topups_query.where(TopUp.created_at >= created_lo)
    if hi is not None:
        topups_query = topups_query.where(TopUp.created_at < hi)
    open_topups = [t for t in topups_query if near(topup_time(t))]
    orphans_query = OrphanPayment.select().where(OrphanPayment.resolved_topup.is_null())
    if lo is not None:
        orphans_query = orphans_query.where(OrphanPayment.created_at >= lo)
    if hi is not None:
        orphans_query = orphans_query.where(OrphanPayment.created_at < hi)
    near_orphans = list(orphans_query)

    claimed_entries: set[str] = set()
    claimed_topups: set[str] = set()
    claimed_orphans: set[int] = set()
    credited_rows: list[StatementRow] = []     # matched to a credit (the amounts may differ)
    left = list(rows)

    def close(row, when):
        return abs(when - row.completed_at) <= window

    def nearest(row, candidates, when_of):
        return min(candidates, key=lambda c: abs(when_of(c) - row.completed_at))

    def match(row, entry, by):
        claimed_entries.add(entry.id)
        credited_rows.append(row)
        _matched(found, row, entry, by)

    def step(handle):
        """Offer every row still left to ``handle``; those it takes (True) leave."""
        left[:] = [row for row in left if not handle(row)]

    # 1. by receipt
    def by_its_receipt(row):
        entry = by_receipt.get(row.receipt)
        if entry is not None:
            match(row, entry, "receipt")
        return entry is not None
    step(by_its_receipt)

    # 2. by receipt to an orphan payment
    def to_an_orphan(row):
        orphan = orphans_by_receipt.get(row.receipt)
        if orphan is None:
            return False
        claimed_orphans.add(orphan.seq)
        _orphan_row(found, row, orphan, open_topups, claimed_topups, claimed_entries, credits,
                    window, credited_rows)
        return True
    step(to_an_orphan)

    # 3. receipt-less credits: phone, amount, time
    receiptless = _ByPhone([e for e in credits if e.mpesa_receipt is None and e.topup_id],
                           lambda e: e.topup.phone)

    def to_a_receiptless_credit(row, same_amount=True):
        fits = [e for e in receiptless.of(row.phone) if e.id not in claimed_entries
                and (not same_amount or e.amount_cents == row.paid_in_cents)
                and close(row, credit_time(e))]
        if fits:
            match(row, nearest(row, fits, credit_time),
                  "phone_amount_time" if same_amount else "phone_time")
        return bool(fits)
    step(to_a_receiptless_credit)

    # 4. open top-ups (unknown, pending): phone, amount, time
    settleable = _ByPhone([t for t in open_topups if t.status in (PENDING, UNKNOWN)],
                          lambda t: t.phone)
    fits_of = {row.line: [t for t in settleable.of(row.phone) if t.id not in claimed_topups
                          and t.amount * 100 == row.paid_in_cents and close(row, topup_time(t))]
               for row in left}
    rows_per_topup: dict[str, int] = {}
    for fits in fits_of.values():
        for topup in fits:
            rows_per_topup[topup.id] = rows_per_topup.get(topup.id, 0) + 1

    def to_an_open_topup(row):
        fits = [t for t in fits_of[row.line] if t.id not in claimed_topups]
        if not fits:
            return False
        topup = nearest(row, fits, topup_time)
        claimed_topups.add(topup.id)
        unambiguous = len(fits_of[row.line]) == 1 and rows_per_topup[topup.id] == 1
        _paid_to_topup(found, row, topup, "phone_amount_time", unambiguous)
        return True
    step(to_an_open_topup)

    # 5. phone and time only: the amounts differ
    def by_phone_and_time(row):
        if to_a_receiptless_credit(row, same_amount=False):
            return True
        fits = [t for t in settleable.of(row.phone) if t.id not in claimed_topups
                and close(row, topup_time(t))]
        if fits:
            topup = nearest(row, fits, topup_time)
            claimed_topups.add(topup.id)
            _paid_to_topup(found, row, topup, "phone_time", False)
        return bool(fits)
    step(by_phone_and_time)

    # 6. belongs to nothing we can credit (a receipt-less orphan, or a failed top-up, is named)
    failed = _ByPhone([t for t in open_topups if t.status == FAILED], lambda t: t.phone)
    loose_orphans = _ByPhone([o for o in near_orphans if o.mpesa_receipt is None],
                             lambda o: o.phone)

    def to_nothing_creditable(row):
        orphans = [o for o in loose_orphans.of(row.phone) if o.seq not in claimed_orphans
                   and o.amount_cents == row.paid_in_cents and close(row, o.created_at)]
        if orphans:
            orphan = nearest(row, orphans, lambda o: o.created_at)
            claimed_orphans.add(orphan.seq)
            _orphan_row(found, row, orphan, open_topups, claimed_topups, claimed_entries,
                        credits, window, credited_rows)
            return True
        fits = [t for t in failed.of(row.phone) if t.id not in claimed_topups
                and close(row, topup_time(t))]
        if fits:
            topup = nearest(row, fits, topup_time)
            claimed_topups.add(topup.id)
            found.paid_not_credited.append({
                **_row(row), "belongs_to": {"topup": _topup(topup)}, "action": "reported",
                "reason": "the top-up failed on Daraja's word, yet the statement shows a "
                          "payment that fits it: a person must decide"})
            return True
        found.paid_not_credited.append({
            **_row(row), "belongs_to": None, "action": "reported",
            "reason": "no top-up, credit or orphan payment fits this payment"})
        return True
    step(to_nothing_creditable)

    # the ledger's side, for the period
    credited = _ByPhone(credited_rows, lambda r: r.phone)
    for entry in credits:
        if entry.id in claimed_entries or not _in(credit_time(entry), start, end):
            continue
        if entry.mpesa_receipt and entry.mpesa_receipt in every_receipt:
            continue   # on the statement, outside the period asked for
        twin = None
        if entry.mpesa_receipt is None and entry.topup_id:
            # the statement row is credited already: a second credit of one payment
            twin = next((r for r in credited.of_ledger_phone(entry.topup.phone)
                         if r.paid_in_cents == entry.amount_cents
                         and close(r, credit_time(entry))), None)
        if twin is not None:
            found.duplicates_ledger.append({**_entry(entry), "duplicate_of": twin.receipt,
                                            "line": twin.line})
        else:
            found.credited_not_on_statement.append(_entry(entry))
    for orphan in near_orphans:
        if orphan.seq in claimed_orphans or not _in(orphan.created_at, start, end):
            continue
        if orphan.mpesa_receipt and orphan.mpesa_receipt in every_receipt:
            continue
        found.orphans_not_on_statement.append(_orphan(orphan))
    for topup in open_topups:
        if (topup.status == UNKNOWN and topup.id not in claimed_topups
                and _in(topup_time(topup), start, end)):
            found.unknown_not_on_statement.append(_topup(topup))
    return found


def _matched(found: Findings, row: StatementRow, entry: LedgerEntry, by: str) -> None:
    item = {**_row(row), "by": by, "ledger_entry": entry.id, "topup": entry.topup_id}
    if entry.amount_cents == row.paid_in_cents:
        found.matched.append(item)
        return
    found.amounts_differ.append({
        **item, "account": entry.topup.account_id if entry.topup_id else None,
        "ledger_receipt": entry.mpesa_receipt, "source": entry.source,
        "statement_amount_cents": row.paid_in_cents, "ledger_amount_cents": entry.amount_cents})


def _paid_to_topup(found: Findings, row: StatementRow, topup: TopUp, by: str,
                   unambiguous: bool) -> None:
    item = {**_row(row), "by": by, "belongs_to": {"topup": _topup(topup)}, "action": "reported"}
    if topup.status == PENDING:
        item["reason"] = ("the top-up is still pending: its callback or query may settle it; "
                          "run again once it has settled or become unknown")
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
        found.plans.append(Plan(row, topup.id, topup.checkout_request_id))
    found.paid_not_credited.append(item)


def _orphan_row(found: Findings, row: StatementRow, orphan: OrphanPayment, open_topups,
                claimed_topups: set, claimed_entries: set, credits, window,
                credited_rows: list) -> None:
    """A statement payment whose receipt (or phone, amount, time) an orphan payment holds."""
    item = {**_row(row), "belongs_to": {"orphan": _orphan(orphan)}, "action": "reported"}
    owner = TopUp.get_or_none(TopUp.checkout_request_id == orphan.checkout_request_id)
    if owner is not None and owner.status == SUCCEEDED:
        entry = next((e for e in credits if e.topup_id == owner.id), None) or \
            LedgerEntry.select(LedgerEntry, TopUp).join(TopUp).where(
                LedgerEntry.topup == owner.id).first()
        if entry is not None and entry.id not in claimed_entries:
            # credited on the query's word (no receipt) for the orphan's CheckoutRequestID
            claimed_entries.add(entry.id)
            claimed_topups.add(owner.id)
            credited_rows.append(row)
            _matched(found, row, entry, "orphan_checkout_request_id")
            return
    amounts_agree = orphan.amount_cents in (None, row.paid_in_cents)
    if owner is not None:
        claimed_topups.add(owner.id)
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
            found.plans.append(Plan(row, owner.id, owner.checkout_request_id))
        else:
            item["reason"] = "the amounts differ: a person must decide"
        found.paid_not_credited.append(item)
        return
    # a push whose answer was lost: its top-up has no CheckoutRequestID and later "claims"
    # the orphan by phone, amount and time
    lost = [t for t in open_topups if t.id not in claimed_topups
            and t.status in (PENDING, UNKNOWN) and t.checkout_request_id is None
            and phone_matches(row.phone, t.phone) and t.amount * 100 == row.paid_in_cents
            and abs(topup_time(t) - row.completed_at) <= window]
    if not lost:
        item["reason"] = ("no top-up claims this orphan payment, so no account can be "
                          "determined: it is reported only")
    elif len(lost) > 1:
        item["reason"] = "more than one top-up could claim this orphan payment"
    else:
        topup = lost[0]
        claimed_topups.add(topup.id)
        item["belongs_to"]["topup"] = _topup(topup)
        if topup.status == PENDING:
            item["reason"] = "its top-up is still pending: run again once it is unknown"
        elif not amounts_agree:
            item["reason"] = "the orphan's amount differs from the statement's"
        else:
            item["action"] = "apply"
            found.plans.append(Plan(row, topup.id, None, orphan.checkout_request_id))
    found.paid_not_credited.append(item)


# --- applying --------------------------------------------------------------------------------

class _Undo(Exception):
    def __init__(self, outcome: str):
        self.outcome = outcome


def apply(found: Findings, run_id: str) -> list[dict]:
    """Settle every safe plan, each in its own transaction. Returns what each did."""
    done = []
    for plan in found.plans:
        outcome = _apply_one(plan, run_id)
        topup = TopUp.get_or_none(TopUp.id == plan.topup_id)
        done.append({"receipt": plan.row.receipt, "line": plan.row.line, "topup": plan.topup_id,
                     "account": topup.account_id if topup else None,
                     "amount_cents": plan.row.paid_in_cents,
                     "orphan": plan.orphan_checkout_request_id, "outcome": outcome})
        for item in found.paid_not_credited:
            if item["receipt"] == plan.row.receipt and item["line"] == plan.row.line:
                item["action"] = "credited" if outcome == "credited" else "not_applied"
                if outcome != "credited":
                    item["reason"] = f"settling it gave {outcome!r}"
    return done


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
            outcome = topups.settle_success(checkout, amount_cents=row.paid_in_cents,
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
    query = Reconciliation.select()
    if starting_after:
        cursor = Reconciliation.get_or_none(Reconciliation.id == starting_after)
        if cursor is None:
            return None
        query = query.where(Reconciliation.seq < cursor.seq)
    rows = list(query.order_by(Reconciliation.seq.desc()).limit(limit + 1))
    return rows[:limit], len(rows) > limit


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
