"""A top-up's whole story, for support: ``topupctl topups show KEY``.

A customer writes "I paid but my wallet is empty" with whatever they have: the top-up's id,
the M-Pesa receipt from their SMS, their phone number, or (from a client's logs) the
CheckoutRequestID. :func:`find` takes any of these; :func:`history` gathers, in the order it
happened, every step the ledger recorded (``topup_event``: the request, the push and Daraja's
answer, queries, the settlement), every callback Daraja sent for it, every paybill report (a
C2B confirmation, a Pull Transactions row) that credited it or came again, its ledger entry, the
events published about it and every webhook attempt for them (when those tables exist).

Phones are masked everywhere; nothing here writes.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from ledger import c2b
from ledger.callbacks import MalformedCallback, parse
from ledger.db import database
from ledger.models import Callback, LedgerEntry, OrphanPayment, TopUp, TopUpEvent
from ledger.phones import InvalidPhone, mask, normalize_kenyan_mobile

KEY_KINDS = ("id", "checkout_request_id", "mpesa_receipt", "phone")


@dataclass
class Found:
    topup: TopUp | None
    matched_by: str | None
    others: list[TopUp] = field(default_factory=list)   # more top-ups for the same phone
    orphan: OrphanPayment | None = None                 # money no top-up knows


@dataclass
class Step:
    at: dt.datetime
    kind: str
    detail: dict
    order: int = 0

    def as_dict(self) -> dict:
        return {"at": iso(self.at), "kind": self.kind, "detail": self.detail}


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds") + "Z"


def find(key: str, *, others_limit: int = 10) -> Found:
    key = (key or "").strip()
    if not key:
        return Found(None, None)
    topup = TopUp.get_or_none(TopUp.id == key)
    if topup is not None:
        return Found(topup, "id")
    topup = TopUp.get_or_none(TopUp.checkout_request_id == key)
    if topup is not None:
        return Found(topup, "checkout_request_id")
    receipt = key.upper()
    topup = TopUp.get_or_none(TopUp.mpesa_receipt == receipt)
    if topup is None:
        entry = LedgerEntry.get_or_none(LedgerEntry.mpesa_receipt == receipt)
        if entry is not None and entry.topup_id:
            topup = TopUp.get_or_none(TopUp.id == entry.topup_id)
    if topup is not None:
        return Found(topup, "mpesa_receipt")
    try:
        phone = normalize_kenyan_mobile(key)
    except InvalidPhone:
        phone = None
    if phone is not None:
        rows = list(TopUp.select().where(TopUp.phone == phone).order_by(TopUp.seq.desc())
                    .limit(others_limit + 1))
        if rows:
            return Found(rows[0], "phone", others=rows[1:])
    orphan = OrphanPayment.get_or_none((OrphanPayment.checkout_request_id == key)
                                       | (OrphanPayment.mpesa_receipt == receipt))
    if orphan is not None:
        topup = (TopUp.get_or_none(TopUp.id == orphan.resolved_topup_id)
                 if orphan.resolved_topup_id else None)
        return Found(topup, "orphan_payment", orphan=orphan)
    return Found(None, None)


def _table_exists(name: str) -> bool:
    try:
        return database.table_exists(name)
    except Exception:
        return False


def _callback_detail(row: Callback) -> dict:
    detail = {"callback": row.seq, "result_code": row.result_code, "outcome": row.outcome,
              "applied_at": iso(row.applied_at), "remote_addr": row.remote_addr}
    try:
        cb = parse(row.body)
    except MalformedCallback:
        detail["well_formed"] = False
        return detail
    detail.update(result_desc=cb.result_desc, mpesa_receipt=cb.receipt,
                  amount_cents=cb.amount_cents, phone=mask(cb.phone))
    return {k: v for k, v in detail.items() if v is not None}


def _c2b_detail(row) -> dict:
    """A paybill payment's report (a C2B confirmation or a Pull Transactions row), phone
    masked."""
    detail = {"c2b_confirmation": row.seq, "source": row.source, "outcome": row.outcome,
              "applied_at": iso(row.applied_at), "remote_addr": row.remote_addr}
    try:
        payment = (c2b.parse_pulled(row.body) if row.source == c2b.PULL
                   else c2b.parse_confirmation(row.body))
    except c2b.MalformedPayment:
        return {k: v for k, v in detail.items() if v is not None}
    detail.update(mpesa_receipt=payment.receipt, amount_cents=payment.amount_cents,
                  bill_ref_number=payment.bill_ref, phone=mask(payment.phone))
    return {k: v for k, v in detail.items() if v is not None}


def _webhook_steps(topup_id: str) -> list[Step]:
    if not (_table_exists("event") and _table_exists("webhook_delivery")
            and _table_exists("webhook_attempt")):
        return []
    p = database.param
    steps = []
    for event_id, event_type, created_at in database.execute_sql(
            f"SELECT id, type, created_at FROM event WHERE topup_id = {p} ORDER BY seq",
            (topup_id,)).fetchall():
        steps.append(Step(_datetime(created_at), "event", {"event": event_id, "type": event_type},
                          order=3))
    for row in database.execute_sql(
            "SELECT a.attempted_at, a.number, a.status_code, a.error, a.duration_ms, "
            "d.id, d.status, e.id, e.type, w.id, w.url "
            "FROM webhook_attempt a JOIN webhook_delivery d ON d.id = a.delivery_id "
            "JOIN event e ON e.id = d.event_id "
            "JOIN webhook_endpoint w ON w.id = d.endpoint_id "
            f"WHERE e.topup_id = {p} ORDER BY a.seq", (topup_id,)).fetchall():
        (at, number, status_code, error, duration_ms, delivery_id, delivery_status, event_id,
         event_type, endpoint_id, url) = row
        detail = {"event": event_id, "type": event_type, "endpoint": endpoint_id, "url": url,
                  "attempt": number, "status_code": status_code, "error": error,
                  "duration_ms": duration_ms, "delivery": delivery_id,
                  "delivery_status": delivery_status}
        steps.append(Step(_datetime(at), "webhook_attempt",
                          {k: v for k, v in detail.items() if v is not None}, order=4))
    return steps


def _datetime(value) -> dt.datetime:
    """SQLite hands raw SQL timestamps back as text."""
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def history(topup: TopUp) -> list[Step]:
    steps = [Step(e.created_at, e.kind, json.loads(e.detail or "{}"), order=1)
             for e in TopUpEvent.select().where(TopUpEvent.topup == topup.id)
             .order_by(TopUpEvent.seq)]
    if topup.checkout_request_id:
        steps += [Step(c.received_at, "callback", _callback_detail(c), order=0)
                  for c in Callback.select().where(
                      Callback.checkout_request_id == topup.checkout_request_id)
                  .order_by(Callback.seq)]
    steps += [Step(c.received_at, "c2b_confirmation", _c2b_detail(c), order=0)
              for c in c2b.for_topup(topup.id)]
    entry = LedgerEntry.get_or_none(LedgerEntry.topup == topup.id)
    if entry is not None:
        steps.append(Step(entry.created_at, "ledger_entry", {
            "ledger_entry": entry.id, "type": entry.type, "amount_cents": entry.amount_cents,
            "balance_after_cents": entry.balance_after_cents,
            "mpesa_receipt": entry.mpesa_receipt, "source": entry.source}, order=2))
    steps += _webhook_steps(topup.id)
    # Python's sort is stable: steps written in one transaction keep their natural order.
    steps.sort(key=lambda s: (s.at, s.order))
    return steps


def summary(topup: TopUp) -> dict:
    """The top-up itself, phone masked."""
    return {
        "id": topup.id, "account": topup.account_id, "status": topup.status,
        "amount": topup.amount, "currency": "KES", "phone": mask(topup.phone),
        "reference": topup.reference, "checkout_request_id": topup.checkout_request_id,
        "mpesa_receipt": topup.mpesa_receipt, "credited_cents": topup.credited_cents,
        "channel": topup.channel,
        "flagged": topup.flagged, "failure_code": topup.failure_code,
        "failure_reason": topup.failure_reason, "push_state": topup.push_state,
        "push_attempts": topup.push_attempts, "query_attempts": topup.query_attempts,
        "created_at": iso(topup.created_at), "pushed_at": iso(topup.pushed_at),
        "completed_at": iso(topup.completed_at),
    }


def orphan_summary(orphan: OrphanPayment) -> dict:
    return {"checkout_request_id": orphan.checkout_request_id,
            "mpesa_receipt": orphan.mpesa_receipt, "amount_cents": orphan.amount_cents,
            "phone": mask(orphan.phone), "received_at": iso(orphan.created_at),
            "resolved_topup": orphan.resolved_topup_id, "resolved_at": iso(orphan.resolved_at),
            "bill_ref_number": orphan.bill_ref_number, "reason": orphan.reason}
