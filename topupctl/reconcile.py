"""``topupctl reconcile STATEMENT.csv [--json] [--since DATE] [--until DATE] [--apply]``.

An organisation-portal statement held against the ledger (contract §5; ``ledger/reconcile.py``
says how). Prints the report, as text or as one JSON object; every run is recorded and listed
by ``GET /ops/reconciliations``. A statement that does not parse whole is refused with the
line at fault (exit status 2) and changes nothing.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from topupctl.cli import LEDGER


def add_parser(sub) -> None:
    """Register the subcommand (on the ledger bound by topupctl's start-up)."""
    from ledger.reconcile import DEFAULT_WINDOW

    rec = sub.add_parser("reconcile", help="hold an M-Pesa organisation-portal statement "
                                           "against the ledger")
    rec.add_argument("statement", metavar="STATEMENT.csv")
    rec.add_argument("--json", action="store_true", help="print the report as one JSON object")
    rec.add_argument("--since", type=_bound(False), default=None, metavar="DATE",
                     help="from this date or time (Nairobi time, like the statement)")
    rec.add_argument("--until", type=_bound(True), default=None, metavar="DATE",
                     help="up to this date (inclusive) or time (exclusive)")
    rec.add_argument("--apply", action="store_true",
                     help="credit, once, what the statement proves was paid and is safe to settle")
    rec.add_argument("--window", type=float, metavar="MINUTES",
                     default=DEFAULT_WINDOW.total_seconds() / 60,
                     help="how far apart a payment and a top-up's push may be to match by "
                          "phone, amount and time (default %(default)g)")
    rec.set_defaults(func=run, needs=LEDGER)


def _bound(end: bool):
    def parse(text):
        from ledger.reconcile import parse_bound
        try:
            return parse_bound(text, end=end)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def run(args) -> None:
    from ledger import db, reconcile
    try:
        statement = reconcile.read_file(args.statement)
    except OSError as exc:
        print(f"topupctl: cannot read {args.statement}: {exc.strerror}", file=sys.stderr)
        sys.exit(2)
    except reconcile.MalformedStatement as exc:
        print(f"topupctl: {args.statement}: {exc} (nothing was changed)", file=sys.stderr)
        sys.exit(2)
    with db.connection():
        report = reconcile.run(statement, since=args.since, until=args.until,
                               window=dt.timedelta(minutes=args.window), apply_safe=args.apply)
    if args.json:
        print(json.dumps(report))
    else:
        print(render(report))


def _kes(cents) -> str:
    return "-" if cents is None else f"KES {cents / 100:,.2f}"


def render(report: dict) -> str:
    """The report for a person: the summary, then every discrepancy on a line."""
    s, st, period = report["summary"], report["statement"], report["period"]
    lines = [(f"reconciliation {report['id']}: {st['name']} (sha256 {st['sha256'][:12]}…), "
              f"{period['since']} to {period['until']}"),
             (f"  {st['payments']} payments, {st['charges']} linked charges, "
              f"{st['outside_period']} rows outside the period"),
             (f"  matched {s['matched']}, paid not credited {s['paid_not_credited']}, "
              f"credited not on statement {s['credited_not_on_statement']}, amounts differ "
              f"{s['amounts_differ']}, accounts differ {s['accounts_differ']}, duplicates "
              f"{s['duplicates_on_statement']} on the "
              f"statement / {s['duplicates_in_ledger']} in the ledger, orphans not on "
              f"statement {s['orphans_not_on_statement']}, unknown not on statement "
              f"{s['unknown_not_on_statement']}")]
    if report["apply"]:
        lines.append(f"  applied: {s['applied']} credited from the statement")
    elif s["safe_to_apply"]:
        lines.append(f"  {s['safe_to_apply']} can be settled safely: run again with --apply")
    for item in report["paid_not_credited"]:
        owner = item["belongs_to"] or {}
        who = ", ".join(filter(None, [
            owner.get("topup") and f"top-up {owner['topup']['id']} ({owner['topup']['status']})",
            owner.get("orphan") and "orphan " + (
                owner["orphan"]["checkout_request_id"]
                or f"paybill A/C {owner['orphan']['bill_ref_number']!r}"),
            owner.get("account") and f"account {owner['account']} ({owner['account_number']})",
        ])) or "nothing"
        action = {"apply": "safe, --apply credits it" if owner or not item.get("reason")
                  else "--apply keeps it as an orphan"}.get(item["action"], item["action"])
        lines.append(f"paid, not credited  {item['receipt']}  line {item['line']}  "
                     f"{_kes(item['amount_cents'])}  {item['phone']}  → {who}: {action}"
                     + (f" ({item['reason']})" if item.get("reason") else ""))
    for item in report["amounts_differ"]:
        lines.append(f"amounts differ      {item['receipt']}  line {item['line']}  statement "
                     f"{_kes(item['statement_amount_cents'])}, ledger "
                     f"{_kes(item['ledger_amount_cents'])}  top-up {item['topup']}")
    for item in report["accounts_differ"]:
        lines.append(f"account differs     {item['receipt']}  line {item['line']}  credited to "
                     f"{item['account']}, A/C No. {item['account_no']!r} names "
                     f"{item['account_no_names']}")
    for item in report["credited_not_on_statement"]:
        lines.append(f"credited, not on statement  {item['receipt'] or '(no receipt)'}  "
                     f"{_kes(item['amount_cents'])}  top-up {item['topup']}  {item['at']}")
    for item in report["duplicates"]["statement"]:
        lines.append(f"duplicate on statement  {item['receipt']}  lines "
                     f"{', '.join(map(str, item['lines']))}")
    for item in report["duplicates"]["ledger"]:
        lines.append(f"duplicate in ledger  {item['ledger_entry']}  top-up {item['topup']}  "
                     f"{_kes(item['amount_cents'])}  same payment as {item['duplicate_of']}")
    for item in report["orphans_not_on_statement"]:
        lines.append(f"orphan not on statement  {item['receipt'] or '-'}  "
                     f"{_kes(item['amount_cents'])}  {item['checkout_request_id']}")
    for item in report["unknown_not_on_statement"]:
        lines.append(f"unknown, not on statement  top-up {item['id']}  "
                     f"{_kes(item['amount_cents'])}  {item['phone']} "
                     "(no money moved; left unknown)")
    return "\n".join(lines)
