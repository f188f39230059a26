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
from types import SimpleNamespace

from ledger import prepared
from ledger.db import database, write_transaction
from ledger.events import event_object
from ledger.ids import new_id
from ledger.models import (
    DELIVERY_CANCELLED, DELIVERY_DELIVERED, DELIVERY_FAILED, DELIVERY_PENDING, Event,
    WebhookDelivery, WebhookEndpoint, utcnow,
)

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
    query = WebhookEndpoint.select().where((WebhookEndpoint.account == account_id)
                                           & WebhookEndpoint.deleted_at.is_null())
    if starting_after:
        cursor = get_endpoint(account_id, starting_after)
        if cursor is None:
            return None
        query = query.where(WebhookEndpoint.seq < cursor.seq)
    rows = list(query.order_by(WebhookEndpoint.seq.desc()).limit(limit + 1))
    return rows[:limit], len(rows) > limit


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


# The statements of an attempt, written once (ledger.prepared): built by Peewee they were
# two thirds of the delivery task's CPU (make bench, "CPU per unit of work").
def _claim_sql(db) -> str:
    p = db.param
    return (f"UPDATE webhook_delivery SET attempts = attempts + 1, next_attempt_at = {p},"
            f" updated_at = {p} WHERE id = {p} AND status = '{DELIVERY_PENDING}'"
            f" AND next_attempt_at <= {p} RETURNING attempts, endpoint_id, event_id")


def _claimed_sql(db) -> str:
    p = db.param
    # the event's top-up and its CheckoutRequestID name the attempt in the log lines (read
    # here, they are not read again by the message's log context)
    return ("SELECT e.url, e.secret, e.deleted_at, v.type, v.created_at, v.data, v.topup_id,"
            " t.checkout_request_id FROM webhook_endpoint e, event v"
            f" LEFT JOIN top_up t ON t.id = v.topup_id WHERE e.id = {p} AND v.id = {p}")


def _cancel_sql(db) -> str:
    return (f"UPDATE webhook_delivery SET status = '{DELIVERY_CANCELLED}',"
            f" next_attempt_at = NULL, attempts = attempts - 1, updated_at = {db.param}"
            f" WHERE id = {db.param}")


# PostgreSQL: what SQLite does with the statements above, as one statement in autocommit.
# The conditions for claiming are the same (a pending delivery that is due; of two workers
# on one row, the second waits for the first's commit, then finds it no longer due and takes
# nothing). The delivery's endpoint, event and top-up are joined in, each by its unique id.
# A deleted endpoint's delivery is cancelled by the same UPDATE, to the state the claim and
# then the cancel left (the attempt not counted): a second UPDATE of the row in the same
# statement, as a writable CTE, would not see the first. `gone` tells which it was.
_CLAIM_PG = f"""
UPDATE webhook_delivery d SET
    attempts = CASE WHEN e.gone THEN d.attempts ELSE d.attempts + 1 END,
    status = CASE WHEN e.gone THEN '{DELIVERY_CANCELLED}' ELSE d.status END,
    next_attempt_at = CASE WHEN e.gone THEN NULL ELSE %(lease)s END,
    updated_at = %(now)s
FROM (SELECT id, url, secret, deleted_at IS NOT NULL OR COALESCE(secret, '') = '' AS gone
      FROM webhook_endpoint) e,
     event v LEFT JOIN top_up t ON t.id = v.topup_id
WHERE d.id = %(delivery)s AND d.status = '{DELIVERY_PENDING}' AND d.next_attempt_at <= %(due)s
  AND e.id = d.endpoint_id AND v.id = d.event_id
RETURNING e.gone, d.attempts, d.event_id, e.url, e.secret, v.type, v.created_at, v.data,
          v.topup_id, t.checkout_request_id
"""
_CLAIM_PG_TYPES = {"lease": "timestamp", "now": "timestamp", "delivery": "text",
                   "due": "timestamp"}


def _claim_pg_sql(db) -> str:
    return " ".join(_CLAIM_PG.split())


def claim(delivery_id: str, now: dt.datetime | None = None) -> Claimed | None:
    """Take the next attempt of a delivery that is due, or None (not due, done, or taken)."""
    now = now or utcnow()
    # a delayed message may come a hair early: a second is close enough
    lease, due = now + CLAIM_LEASE, now + dt.timedelta(seconds=1)
    if prepared.is_sqlite(database.obj):
        row = _claim_sqlite(delivery_id, now, lease, due)
    else:
        params = {"lease": lease, "now": now, "delivery": delivery_id, "due": due}
        if database.in_transaction():
            # a caller's transaction: a savepoint, and no PREPARE (a failed one would abort it)
            with prepared.one_statement_transaction():
                row = database.execute_sql(prepared.statement(_claim_pg_sql), params).fetchone()
        else:
            row = prepared.execute_server_prepared("webhook_claim", _claim_pg_sql,
                                                   _CLAIM_PG_TYPES, params).fetchone()
        if row is not None and row[0]:
            row = None  # the endpoint was deleted: the delivery is cancelled, not claimed
    if row is None:
        return None
    (_, attempts, event_id, url, secret, event_type, created_at, data, topup_id,
     checkout_request_id) = row
    event = SimpleNamespace(id=event_id, type=event_type, data=data,
                            created_at=Event.created_at.python_value(created_at))
    return Claimed(delivery_id=delivery_id, attempt=attempts, url=url, secret=secret,
                   event_id=event_id, body=json.dumps(event_object(event), separators=(",", ":")),
                   topup_id=topup_id, checkout_request_id=checkout_request_id)


def _claim_sqlite(delivery_id: str, now: dt.datetime, lease: dt.datetime,
                  due: dt.datetime) -> tuple | None:
    """SQLite: the claim, then the read, in one transaction (its RETURNING cannot name a
    joined table); a deleted endpoint's delivery is cancelled there too, and gives None."""
    with write_transaction():
        # the UPDATE hands back the claimed row (it was read again after it)
        claimed = database.execute_sql(prepared.statement(_claim_sql),
                                       (lease, now, delivery_id, due)).fetchall()
        if not claimed:
            return None
        attempts, endpoint_id, event_id = claimed[0]
        (url, secret, deleted_at, event_type, created_at, data, topup_id,
         checkout_request_id) = database.execute_sql(
            prepared.statement(_claimed_sql), (endpoint_id, event_id)).fetchone()
        if deleted_at is not None or not secret:
            database.execute_sql(prepared.statement(_cancel_sql), (now, delivery_id))
            return None
    return (False, attempts, event_id, url, secret, event_type, created_at, data, topup_id,
            checkout_request_id)


def _attempt_sql(db) -> str:
    p = db.param
    insert = ("INSERT INTO webhook_attempt (delivery_id, number, attempted_at, status_code,"
              f" error, duration_ms) VALUES ({p}, {p}, {p}, {p}, {p}, {p})")
    update = (f"UPDATE webhook_delivery SET status = {p}, last_status_code = {p},"
              f" last_error = {p}, updated_at = {p}, next_attempt_at = {p},"
              f" delivered_at = COALESCE({p}, delivered_at)"
              f" WHERE id = {p} AND status = '{DELIVERY_PENDING}' AND attempts = {p}")
    if prepared.is_sqlite(db):
        return insert + ";" + update  # two statements, run one by one in a transaction
    # PostgreSQL: one statement, so one round trip and no BEGIN/COMMIT; the attempt is
    # written whether or not the UPDATE changes a row, and both commit together.
    return f"WITH a AS ({insert}) {update}"


def record_attempt(claimed: Claimed, *, status_code: int | None, error: str | None,
                   duration_ms: int, now: dt.datetime | None = None) -> tuple[str, float | None]:
    """Note how an attempt went; returns (delivery status, seconds until the next attempt)."""
    now = now or utcnow()
    succeeded = status_code is not None and 200 <= status_code < 300
    delay = None if succeeded else retry_delay_s(claimed.attempt)
    delivered_at = None
    if succeeded:
        status, next_attempt_at, delivered_at = DELIVERY_DELIVERED, None, now
    elif delay is None:
        status, next_attempt_at = DELIVERY_FAILED, None
    else:
        status, next_attempt_at = DELIVERY_PENDING, now + dt.timedelta(seconds=delay)
    error = (error or None) and error[:255]
    attempt = (claimed.delivery_id, claimed.attempt, now, status_code, error, duration_ms)
    update = (status, status_code, error, now, next_attempt_at, delivered_at,
              claimed.delivery_id, claimed.attempt)
    sql = prepared.statement(_attempt_sql)
    if prepared.is_sqlite(database.obj):
        insert_sql, update_sql = sql.split(";")
        with write_transaction():
            database.execute_sql(insert_sql, attempt)
            changed = database.execute_sql(update_sql, update).rowcount
    else:
        with prepared.one_statement_transaction():
            changed = database.execute_sql(sql, attempt + update).rowcount
    if not changed:  # cancelled meanwhile, or our lease ran out and another attempt began
        return "superseded", None
    return status, delay


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
