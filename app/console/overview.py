"""The console's overview: the last 24 hours at a glance, read from the ledger and Redis.

- top-ups created per hour, by their status now (the chart, drawn as SVG by the template);
- what needs a person: unknown top-ups, orphan payments, dead letters, failing webhook
  deliveries, the last reconciliation's discrepancies;
- every queue's depth and the age of its oldest ready message (``telemetry.queues``, as
  ``topupctl queues`` and ``GET /ops/queues`` read them);
- Daraja's error answers by kind, from the top-ups' histories (pushes not sent, refused or
  ambiguous; queries Daraja did not answer).
"""
from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field

from peewee import fn

from ledger import db
from ledger.models import (
    DELIVERY_FAILED, DELIVERY_PENDING, FAILED, PENDING, SUCCEEDED, UNKNOWN, OrphanPayment,
    Reconciliation, TopUp, TopUpEvent, WebhookDelivery, utcnow,
)

HOURS = 24
STATUSES = (SUCCEEDED, FAILED, UNKNOWN, PENDING)
# the findings of a reconciliation that ask a person to look
DISCREPANCIES = ("paid_not_credited", "amounts_differ", "credited_not_on_statement",
                 "duplicates_on_statement", "duplicates_in_ledger", "orphans_not_on_statement",
                 "unknown_not_on_statement")
DARAJA_STEPS = {"push_not_sent": "push not sent", "push_refused": "push refused",
                "push_ambiguous": "push answer lost", "query": "query not answered"}
QUERY_ANSWERS = frozenset({"pending", "paid", "failed", "unknown"})   # Daraja did answer
EVENTS_READ = 20_000


@dataclass
class Hour:
    start: dt.datetime
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def hourly(now: dt.datetime | None = None) -> list[Hour]:
    """The last 24 hours, oldest first, each with its top-ups by status."""
    now = now or utcnow()
    first = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=HOURS - 1)
    hours = [Hour(first + dt.timedelta(hours=i)) for i in range(HOURS)]
    rows = (TopUp.select(_hour(TopUp.created_at).alias("hour"), TopUp.status,
                         fn.COUNT(TopUp.seq).alias("n"))
            .where(TopUp.created_at >= first)
            .group_by(_hour(TopUp.created_at), TopUp.status).tuples())
    by_start = {hour.start: hour for hour in hours}
    for stamp, status, count in rows:
        hour = by_start.get(dt.datetime.strptime(str(stamp)[:13], "%Y-%m-%d %H"))
        if hour is not None:
            hour.counts[status] = hour.counts.get(status, 0) + count
    return hours


def _hour(column):
    """``YYYY-MM-DD HH`` of a timestamp, in the database's own words."""
    if db.is_sqlite():
        return fn.strftime("%Y-%m-%d %H", column)
    return fn.to_char(column, "YYYY-MM-DD HH24")


def needs_a_person() -> dict:
    """The counts that ask for a person, and the last reconciliation run."""
    failing = WebhookDelivery.select().where(
        (WebhookDelivery.status == DELIVERY_FAILED)
        | ((WebhookDelivery.status == DELIVERY_PENDING) & (WebhookDelivery.attempts > 0)))
    last_run = Reconciliation.select().order_by(Reconciliation.seq.desc()).first()
    discrepancies = None
    if last_run is not None:
        summary = json.loads(last_run.summary or "{}")
        discrepancies = sum(int(summary.get(name) or 0) for name in DISCREPANCIES) - int(
            summary.get("applied") or 0)
    return {
        "unknown": TopUp.select().where(TopUp.status == UNKNOWN).count(),
        "orphans": OrphanPayment.select().where(OrphanPayment.resolved_topup.is_null()).count(),
        "failing_webhooks": failing.count(),
        "last_reconciliation": last_run,
        "discrepancies": discrepancies,
    }


def daraja_errors(now: dt.datetime | None = None) -> list[tuple[str, str, int]]:
    """``(step, kind, count)`` of Daraja's error answers in the last 24 hours, most first."""
    since = (now or utcnow()) - dt.timedelta(hours=HOURS)
    counted: Counter = Counter()
    rows = (TopUpEvent.select(TopUpEvent.kind, TopUpEvent.detail)
            .where(TopUpEvent.kind.in_(list(DARAJA_STEPS)) & (TopUpEvent.created_at >= since))
            .order_by(TopUpEvent.seq.desc()).limit(EVENTS_READ).tuples())
    for step, raw in rows:
        try:
            detail = json.loads(raw or "{}")
        except ValueError:
            detail = {}
        if step == "query":
            if detail.get("answer") in QUERY_ANSWERS:
                continue
            kind = detail.get("answer")
        elif step == "push_refused":
            kind = detail.get("error_message") or detail.get("error_code")
        else:
            kind = detail.get("reason")
        code = detail.get("error_code")
        label = " ".join(str(part) for part in (kind or "?", code) if part and part != kind)
        counted[(DARAJA_STEPS[step], label)] += 1
    return [(step, kind, n) for (step, kind), n in counted.most_common()]
