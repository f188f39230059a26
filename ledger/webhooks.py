"""Webhook endpoints and the state of their deliveries.

A delivery is a row with a ``next_attempt_at``; whoever wants to attempt it must first
*claim* it with a conditional UPDATE (only a pending delivery that is due can be claimed,
and claiming pushes ``next_attempt_at`` a lease into the future), so a message delivered
twice, a sweep that re-enqueued it, or two workers on one message make one attempt at a
time. A worker that dies mid-attempt leaves the lease to run out; the sweep then hands the
delivery back. Every attempt is recorded with its status code, error and duration.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
from dataclasses import dataclass

import peewee as pw

from ledger import pages, prebuilt
from ledger.db import write_transaction
from ledger.events import event_object
from ledger.ids import new_id
from ledger.models import (
    DELIVERY_CANCELLED, DELIVERY_DELIVERED, DELIVERY_FAILED, DELIVERY_PENDING, Event, TopUp,
    WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow,
)
from ledger.prebuilt import param

# Growing delays between attempts: the 13th and last comes about 77.6 hours after the
# first, so a receiver that is down for three days still gets every event.
RETRY_DELAYS_S = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600) + (10 * 3600,) * 7
MAX_ATTEMPTS = len(RETRY_DELAYS_S) + 1
# Longer than any attempt can take (DNS, connect and read timeouts): a claim older than this
# was abandoned by a worker that died.
CLAIM_LEASE = dt.timedelta(seconds=90)
# A message was sent for the delivery this recently: the sweep leaves it to that message.
ENQUEUE_GRACE = dt.timedelta(seconds=60)
SWEEP_BATCH = 500


def new_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes, as the Standard Webhooks libraries expect."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


# --- endpoints -------------------------------------------------------------------------------

def create_endpoint(account_id: str, url: str, events: list[str]) -> WebhookEndpoint:
    """A new endpoint with its own secret. Call inside a write transaction."""
    return WebhookEndpoint.create(id=new_id("we"), account=account_id, url=url,
                                  events=json.dumps(list(events)), secret=new_secret())


def get_endpoint(account_id: str, endpoint_id: str) -> WebhookEndpoint | None:
    return WebhookEndpoint.get_or_none((WebhookEndpoint.id == endpoint_id)
                                       & (WebhookEndpoint.account == account_id)
                                       & WebhookEndpoint.deleted_at.is_null())


def list_endpoints(account_id: str, *, limit: int,
                   starting_after: str | None) -> tuple[list[WebhookEndpoint], bool] | None:
    """Newest first; None when ``starting_after`` names no endpoint of this account."""
    live = (WebhookEndpoint.account == account_id) & WebhookEndpoint.deleted_at.is_null()
    return pages.newest_first(WebhookEndpoint.select().where(live), WebhookEndpoint,
                              limit=limit, starting_after=starting_after, scope=live)


def delete_endpoint(account_id: str, endpoint_id: str) -> bool:
    """Stop an endpoint: its pending deliveries are cancelled and its secret forgotten."""
    now = utcnow()
    with write_transaction():
        deleted = (WebhookEndpoint.update(deleted_at=now, secret="")
                   .where((WebhookEndpoint.id == endpoint_id)
                          & (WebhookEndpoint.account == account_id)
                          & WebhookEndpoint.deleted_at.is_null())
                   .execute())
        if deleted:
            (WebhookDelivery.update(status=DELIVERY_CANCELLED, next_attempt_at=None, updated_at=now)
             .where((WebhookDelivery.endpoint == endpoint_id)
                    & (WebhookDelivery.status == DELIVERY_PENDING)).execute())
    return deleted == 1


# --- deliveries ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claimed:
    """What one attempt needs, read when it was claimed."""
    delivery_id: str
    attempt: int           # 1 for the first
    url: str
    secret: str
    event_id: str
    body: str              # the event as JSON: the same bytes on every attempt
    topup_id: str | None = None             # the event's top-up, for the log lines
    checkout_request_id: str | None = None


def retry_delay_s(attempts_made: int) -> float | None:
    """Seconds from the end of attempt ``attempts_made`` to the next one; None: give up."""
    if attempts_made > len(RETRY_DELAYS_S):
        return None
    return RETRY_DELAYS_S[attempts_made - 1]


def claim(delivery_id: str, now: dt.datetime | None = None) -> Claimed | None:
    """Take the next attempt of a delivery that is due, or None (not due, done, or taken).

    The conditional UPDATE is the claim, committed by itself: of two workers on one row, the
    second waits for the first's commit, then finds it no longer due and takes nothing. A
    deleted endpoint's delivery is cancelled instead, its claim not counted as an attempt.
    A worker that dies between the two leaves the claim to run out its lease, and the sweep
    sends the delivery again."""
    now = now or utcnow()
    # a delayed message may come a hair early: a second is close enough
    claimed = CLAIM.first(id=delivery_id, next_attempt_at=now + CLAIM_LEASE, updated_at=now,
                          due=now + dt.timedelta(seconds=1))
    if claimed is None:
        return None
    attempt, endpoint_id, event_id = claimed
    read = TO_ATTEMPT.first(endpoint=endpoint_id, event=event_id)
    (event_type, data, created_at, topup_id, url, secret, deleted_at,
     checkout_request_id) = read or (None,) * 8
    if read is None or deleted_at is not None or not secret:
        (WebhookDelivery.update(status=DELIVERY_CANCELLED, next_attempt_at=None,
                                attempts=WebhookDelivery.attempts - 1, updated_at=now)
         .where((WebhookDelivery.id == delivery_id)
                & (WebhookDelivery.attempts == attempt)).execute())
        return None
    event = Event(id=event_id, type=event_type, data=data, created_at=created_at)
    return Claimed(delivery_id=delivery_id, attempt=attempt, url=url, secret=secret,
                   event_id=event_id,
                   body=json.dumps(event_object(event), separators=(",", ":")),
                   topup_id=topup_id, checkout_request_id=checkout_request_id)


# The attempt's statements (ledger.prebuilt: Peewee writes their SQL once).
CLAIM = prebuilt.Statement(
    WebhookDelivery.update(attempts=WebhookDelivery.attempts + 1,
                           next_attempt_at=param(WebhookDelivery.next_attempt_at),
                           updated_at=param(WebhookDelivery.updated_at))
    .where((WebhookDelivery.id == param(WebhookDelivery.id))
           & (WebhookDelivery.status == DELIVERY_PENDING)
           & (WebhookDelivery.next_attempt_at <= param(WebhookDelivery.next_attempt_at, "due")))
    .returning(WebhookDelivery.attempts, WebhookDelivery.endpoint, WebhookDelivery.event))
# the endpoint, the event, and the event's top-up (its CheckoutRequestID names the attempt in
# the log lines), in one read
TO_ATTEMPT = prebuilt.Statement(
    Event.select(Event.type, Event.data, Event.created_at, Event.topup,
                 WebhookEndpoint.url, WebhookEndpoint.secret, WebhookEndpoint.deleted_at,
                 TopUp.checkout_request_id)
    .join(WebhookEndpoint, on=(WebhookEndpoint.id == param(WebhookEndpoint.id, "endpoint")))
    .switch(Event)
    .join(TopUp, pw.JOIN.LEFT_OUTER, on=(TopUp.id == Event.topup))
    .where(Event.id == param(Event.id, "event")).limit(1))
ATTEMPT = prebuilt.Insert(WebhookAttempt, WebhookAttempt.delivery, WebhookAttempt.number,
                          WebhookAttempt.attempted_at, WebhookAttempt.status_code,
                          WebhookAttempt.error, WebhookAttempt.duration_ms)
# our attempt still: not cancelled meanwhile, and our lease did not run out into another
# worker's attempt
ATTEMPTED = prebuilt.Statement(
    WebhookDelivery.update(status=param(WebhookDelivery.status),
                           next_attempt_at=param(WebhookDelivery.next_attempt_at),
                           delivered_at=param(WebhookDelivery.delivered_at),
                           last_status_code=param(WebhookDelivery.last_status_code),
                           last_error=param(WebhookDelivery.last_error),
                           updated_at=param(WebhookDelivery.updated_at))
    .where((WebhookDelivery.id == param(WebhookDelivery.id))
           & (WebhookDelivery.status == DELIVERY_PENDING)
           & (WebhookDelivery.attempts == param(WebhookDelivery.attempts))))


def record_attempt(claimed: Claimed, *, status_code: int | None, error: str | None,
                   duration_ms: int, now: dt.datetime | None = None) -> tuple[str, float | None]:
    """Note how an attempt went; returns (delivery status, seconds until the next attempt)."""
    now = now or utcnow()
    succeeded = status_code is not None and 200 <= status_code < 300
    delay = None if succeeded else retry_delay_s(claimed.attempt)
    # a delivery still pending was never delivered: delivered_at is written only once it is
    outcome = {"last_status_code": status_code, "last_error": (error or None) and error[:255],
               "updated_at": now, "delivered_at": None}
    if succeeded:
        outcome.update(status=DELIVERY_DELIVERED, next_attempt_at=None, delivered_at=now)
    elif delay is None:
        outcome.update(status=DELIVERY_FAILED, next_attempt_at=None)
    else:
        outcome.update(status=DELIVERY_PENDING,
                       next_attempt_at=now + dt.timedelta(seconds=delay))
    with write_transaction():
        ATTEMPT.execute(claimed.delivery_id, claimed.attempt, now, status_code,
                        outcome["last_error"], duration_ms)
        changed = ATTEMPTED.rowcount(id=claimed.delivery_id, attempts=claimed.attempt,
                                     **outcome)
    if not changed:
        return "superseded", None
    return outcome["status"], delay


def mark_enqueued(delivery_id: str, at: dt.datetime) -> None:
    WebhookDelivery.update(enqueued_at=at).where(WebhookDelivery.id == delivery_id).execute()


def due_deliveries(now: dt.datetime | None = None, *, batch: int = SWEEP_BATCH) -> list[str]:
    """Pending deliveries that are due and that no message was sent for lately; they are
    marked as sent for, so the next sweep leaves them to the messages the caller sends."""
    now = now or utcnow()
    with write_transaction():
        due = [row.id for row in WebhookDelivery.select(WebhookDelivery.id).where(
            (WebhookDelivery.status == DELIVERY_PENDING)
            & (WebhookDelivery.next_attempt_at <= now)
            & (WebhookDelivery.enqueued_at.is_null()
               | (WebhookDelivery.enqueued_at < now - ENQUEUE_GRACE)))
            .order_by(WebhookDelivery.next_attempt_at).limit(batch)]
        if due:
            WebhookDelivery.update(enqueued_at=now).where(WebhookDelivery.id.in_(due)).execute()
    return due


def send_again_now(delivery_id: str, now: dt.datetime | None = None) -> bool:
    """A person asks for another attempt now (the console): a pending delivery becomes due
    at once, a failed one (its retries used up) pending again for one more attempt. A
    delivery that was delivered or cancelled, or whose endpoint was deleted, is left alone.
    The caller sends ``deliver_webhook`` after this commits; the sweep does if it cannot."""
    now = now or utcnow()
    live_endpoints = WebhookEndpoint.select(WebhookEndpoint.id).where(
        WebhookEndpoint.deleted_at.is_null())
    with write_transaction():
        return bool(WebhookDelivery.update(status=DELIVERY_PENDING, next_attempt_at=now,
                                           enqueued_at=now, updated_at=now)
                    .where((WebhookDelivery.id == delivery_id)
                           & WebhookDelivery.status.in_((DELIVERY_PENDING, DELIVERY_FAILED))
                           & WebhookDelivery.endpoint.in_(live_endpoints))
                    .execute())
