"""Events (contract §3): ``wallet.top_up`` and ``topup.failed``.

An event is written inside the transaction that made it true (the credit, the failure), and
so is one ``webhook_delivery`` row for every endpoint of the account that asked for its
type: if the transaction commits, the deliveries exist and the scheduler's sweep will see
them through, whatever happens to Redis; if it rolls back, there is nothing to deliver.

Sending the delivery messages is the workers' business, and happens only after the commit
(Warehouse's after-commit hook): a transaction wrapped in :func:`publishing` collects the
new delivery ids, and the notifier that the workers install with :func:`set_notifier` is
called with them once the transaction has committed. The ledger imports no broker.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
from typing import Callable

from ledger import pages, prebuilt
from ledger.db import database
from ledger.ids import new_id
from ledger.models import (
    DELIVERY_PENDING, STK_PUSH, Event, WebhookDelivery, WebhookEndpoint, utcnow,
)
from ledger.prebuilt import param

log = logging.getLogger(__name__)

WALLET_TOP_UP = "wallet.top_up"
TOPUP_FAILED = "topup.failed"
EVENT_TYPES = (WALLET_TOP_UP, TOPUP_FAILED)

_local = threading.local()
_notifier: Callable[[list[str]], None] | None = None


def set_notifier(notifier: Callable[[list[str]], None] | None) -> None:
    """Install what is called with new delivery ids after their transaction commits."""
    global _notifier
    _notifier = notifier


@contextlib.contextmanager
def publishing():
    """Wrap a write transaction that may publish events:
    ``with events.publishing(), write_transaction(): …``.

    Deliveries created inside are handed to the notifier after the transaction committed,
    and forgotten if it raised. A failing notifier is logged, never raised: the deliveries
    are committed and the sweep sends what the notifier could not.
    """
    depth = getattr(_local, "depth", 0)
    if depth == 0:
        _local.pending = []
    _local.depth = depth + 1
    completed = False
    try:
        yield
        completed = True
    finally:
        _local.depth -= 1
        if _local.depth == 0:
            pending, _local.pending = _local.pending, []
            # Still inside a caller's transaction: it has not committed, so leave the
            # deliveries to the sweep rather than announce rows nobody can see yet.
            if completed and pending and not database.in_transaction():
                _notify(pending)


def has_notifier() -> bool:
    return _notifier is not None


def _notify(delivery_ids: list[str]) -> None:
    if _notifier is None:
        return
    try:
        _notifier(delivery_ids)
    except Exception as exc:
        log.warning("could not enqueue webhook deliveries; the sweep will",
                    extra={"deliveries": len(delivery_ids), "error": type(exc).__name__})


# written with every credit (ledger.prebuilt: Peewee builds their SQL once)
EVENT = prebuilt.Insert(Event, Event.id, Event.account, Event.type, Event.topup, Event.data,
                        Event.created_at)
DELIVERY = prebuilt.Insert(WebhookDelivery, WebhookDelivery.id, WebhookDelivery.event,
                           WebhookDelivery.endpoint, WebhookDelivery.status,
                           WebhookDelivery.attempts, WebhookDelivery.next_attempt_at,
                           WebhookDelivery.enqueued_at, WebhookDelivery.created_at,
                           WebhookDelivery.updated_at)

# the account's endpoints, read for every event (ledger.prebuilt: Peewee writes it once)
ENDPOINTS = prebuilt.Statement(
    WebhookEndpoint.select(WebhookEndpoint.id, WebhookEndpoint.events)
    .where((WebhookEndpoint.account == param(WebhookEndpoint.account))
           & WebhookEndpoint.deleted_at.is_null()))


def publish(account_id: str, event_type: str, data: dict, *, topup_id: str | None = None,
            now: dt.datetime | None = None) -> str:
    """Write an event and its deliveries; the event's id. Call inside the transaction that
    made it true."""
    now = now or utcnow()
    event_id = new_id("evt")
    EVENT.execute(event_id, account_id, event_type, topup_id,
                  json.dumps(data, separators=(",", ":")), now)
    # Announced after the commit by the notifier; without one (a process that did not load
    # the workers) the deliveries are left for the sweep's very next pass.
    announced = getattr(_local, "depth", 0) > 0 and _notifier is not None
    for endpoint_id, subscribed in ENDPOINTS.rows(account=account_id):
        if event_type not in json.loads(subscribed):
            continue
        delivery_id = new_id("whd")
        # if the announcement fails, the sweep takes it after a grace
        DELIVERY.execute(delivery_id, event_id, endpoint_id, DELIVERY_PENDING, 0, now,
                         now if announced else None, now, now)
        if announced:
            _local.pending.append(delivery_id)
    return event_id


# --- the events the top-ups publish ------------------------------------------------------------

def topup_credited(topup, *, ledger_entry_id: str, amount_cents: int, balance_cents: int,
                   currency: str) -> str:
    """``wallet.top_up``: the top-up as it now stands and the balance after the credit."""
    cents = balance_cents
    return publish(topup.account_id, WALLET_TOP_UP, {
        "topup": topup_object(topup), "ledger_entry": ledger_entry_id,
        "amount_cents": amount_cents, "currency": currency,
        "balance": f"{cents // 100}.{cents % 100:02d}", "balance_cents": cents,
    }, topup_id=topup.id)


def topup_failed(topup) -> str:
    return publish(topup.account_id, TOPUP_FAILED, {"topup": topup_object(topup)},
                   topup_id=topup.id)


# --- how they look ---------------------------------------------------------------------------

def timestamp(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.replace(microsecond=0).isoformat() + "Z"


def topup_object(row) -> dict:
    """The contract's top-up object (the API's own serializer is held to it by a test)."""
    return {
        "id": row.id, "object": "topup", "provider": row.provider, "status": row.status,
        "amount": row.amount, "currency": "KES", "phone": row.phone,
        "reference": row.reference, "metadata": json.loads(row.metadata or "{}"),
        "checkout_request_id": row.checkout_request_id, "mpesa_receipt": row.mpesa_receipt,
        "failure_code": row.failure_code, "failure_reason": row.failure_reason,
        "channel": row.channel or STK_PUSH, "flagged": row.flagged,
        "created_at": timestamp(row.created_at), "updated_at": timestamp(row.updated_at),
        "completed_at": timestamp(row.completed_at),
    }


def event_object(row: Event) -> dict:
    return {"id": row.id, "object": "event", "type": row.type,
            "created_at": timestamp(row.created_at), "data": json.loads(row.data)}


# --- reading ---------------------------------------------------------------------------------

def get_event(account_id: str, event_id: str) -> Event | None:
    return Event.get_or_none((Event.id == event_id) & (Event.account == account_id))


def list_events(account_id: str, *, event_type: str | None, limit: int,
                starting_after: str | None) -> tuple[list[Event], bool] | None:
    """Newest first; None when ``starting_after`` names no event of this account."""
    mine = Event.account == account_id
    query = Event.select().where(mine)
    if event_type:
        query = query.where(Event.type == event_type)
    return pages.newest_first(query, Event, limit=limit, starting_after=starting_after,
                              scope=mine)
