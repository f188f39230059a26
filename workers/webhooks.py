"""Webhook deliveries (contract §3): signed per Standard Webhooks, retried for days.

Every delivery is a database row (see ``ledger/webhooks.py``); a message only says "try
this delivery now". The actor claims the delivery, POSTs the event signed with the
``standardwebhooks`` library (``webhook-id`` is the event id on every attempt), records the
attempt, and schedules the next one: a short wait rides a delayed message, a long one is
left to :func:`sweep`, which the scheduler runs every few seconds and which also re-sends
whatever a lost message or a killed worker left behind. Safe to run twice: a delivery that
is not due, is done, or is being attempted cannot be claimed.
"""
from __future__ import annotations

import datetime as dt
import logging
import time

import dramatiq
import standardwebhooks

from ledger import db, idempotency, webhooks
from ledger.models import utcnow
from telemetry import logs
from workers import runtime, webhook_urls

log = logging.getLogger(__name__)

WEBHOOKS_QUEUE = "webhooks"
USER_AGENT = "topup-gateway-webhooks/1"
# A wait up to this long rides a delayed message (they sit in the workers' memory, so not
# for hours); a longer one waits in the database for the sweep.
DELAYED_MESSAGE_UP_TO_S = 600

DATABASE_ERRORS = db.DATABASE_ERRORS


def sign(secret: str, event_id: str, body: str, now: float | None = None) -> dict:
    """The Standard Webhooks headers for one attempt."""
    seconds = int(now if now is not None else time.time())
    signed_at = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)
    return {"webhook-id": event_id, "webhook-timestamp": str(seconds),
            "webhook-signature": standardwebhooks.Webhook(secret).sign(event_id, signed_at, body)}


def attempt(delivery_id: str, *, allow_private: bool, post=webhook_urls.post
            ) -> tuple[str, float | None]:
    """Make the next attempt of a delivery if it is due; (status, seconds to the next one)."""
    claimed = webhooks.claim(delivery_id)
    if claimed is None:
        return "not_claimed", None
    logs.amend(topup_id=claimed.topup_id, checkout_request_id=claimed.checkout_request_id)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               **sign(claimed.secret, claimed.event_id, claimed.body)}
    status_code, error = None, None
    started = time.monotonic()
    try:
        status_code = post(claimed.url, claimed.body.encode("utf-8"), headers,
                           allow_private=allow_private)
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except webhook_urls.UnsafeUrl as exc:
        error = f"refused: the URL {exc}"
    except webhook_urls.DeliveryFailed as exc:
        error = str(exc)
    except Exception as exc:  # a bug must cost an attempt, not leave the delivery claimed
        log.exception("webhook attempt failed unexpectedly", extra={"delivery": delivery_id})
        error = f"unexpected error: {type(exc).__name__}"
    duration_ms = int((time.monotonic() - started) * 1000)
    status, delay = webhooks.record_attempt(claimed, status_code=status_code, error=error,
                                            duration_ms=duration_ms)
    log.info("webhook attempt", extra={"delivery": delivery_id, "event": claimed.event_id,
                                       "attempt": claimed.attempt, "status_code": status_code,
                                       "error": error, "duration_ms": duration_ms,
                                       "outcome": status, "retry_in_s": delay})
    return status, delay


def _retry_on_database_errors(retries: int, exc: BaseException) -> bool:
    # HTTP failures are not exceptions here: they are recorded and scheduled. Only a
    # database that blinked is worth retrying the message for.
    return isinstance(exc, DATABASE_ERRORS) and retries < 5


@dramatiq.actor(queue_name=WEBHOOKS_QUEUE, max_retries=5, min_backoff=1_000, max_backoff=60_000,
                retry_when=_retry_on_database_errors, time_limit=120_000)
def deliver_webhook(delivery_id: str) -> None:
    settings = runtime.get().settings
    status, delay = attempt(delivery_id, allow_private=settings.webhook_allow_private)
    if status == "pending" and delay is not None and delay <= DELAYED_MESSAGE_UP_TO_S:
        send_later(delivery_id, delay)


def send_later(delivery_id: str, delay_s: float) -> None:
    # The sweep counts its grace from the due time, so it leaves this message alone.
    webhooks.mark_enqueued(delivery_id, utcnow() + dt.timedelta(seconds=delay_s))
    deliver_webhook.send_with_options(args=(delivery_id,), delay=int(delay_s * 1000))


def enqueue(delivery_ids: list[str]) -> None:
    """Send the deliveries now. The start-up installs this as the ledger's notifier
    (:func:`ledger.events.set_notifier`): deliveries created by a committed event are sent
    from the thread that committed it."""
    for delivery_id in delivery_ids:
        deliver_webhook.send(delivery_id)


def sweep(now: dt.datetime | None = None) -> dict:
    """The scheduler's part for webhooks: re-send deliveries that are due and that no
    message is on its way for, and forget idempotency answers past their retention."""
    with db.connection():
        due = webhooks.due_deliveries(now)
        purged = idempotency.purge(now)
    enqueue(due)
    return {"webhooks_due": len(due), "idempotency_keys_purged": purged}


def due_deliveries(now: dt.datetime | None = None) -> list[str]:
    """The ids :func:`sweep` would re-send (marking them as sent for)."""
    return webhooks.due_deliveries(now)
