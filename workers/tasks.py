"""What the actors do, as plain functions with their dependencies passed in."""
from __future__ import annotations

import logging
import time

import peewee

from daraja import errors as daraja_errors
from ledger import topups
from ledger.phones import mask

log = logging.getLogger(__name__)

# A push refused as "busy" or never sent is tried this many times in all (counted in the
# database, so a worker killed mid-push also counts) before the top-up is failed.
MAX_PUSH_ATTEMPTS = 6


class PushNotSentYet(Exception):
    """The push certainly did not reach Daraja; try again later."""

    def __init__(self, reason: str, retry_after_s: float | None = None):
        super().__init__(reason)
        self.retry_after_s = retry_after_s


def push(topup_id: str, daraja, *, query_after_s: int) -> tuple[str, list[int]]:
    """Send a top-up's STK push once. Returns (outcome, callbacks that arrived first)."""
    topup = topups.claim_push(topup_id)
    if topup is None:
        return "not_claimed", []
    context = {"topup_id": topup_id, "phone": mask(topup.phone)}
    try:
        accepted = daraja.stk_push(amount=topup.amount, phone=topup.phone,
                                   account_reference=topup.reference, description="Top-up")
    except daraja_errors.DarajaError as exc:
        detail = {"error": type(exc).__name__, "error_code": exc.error_code}
        if exc.may_have_been_processed:
            # The prompt may be on the customer's phone: never send a second one.
            log.warning("push outcome unknown", extra={**context, **detail})
            topups.record_push_ambiguous(topup_id, reason=f"{type(exc).__name__} {exc.error_code or ''}".strip())
            return "ambiguous", []
        if exc.retryable and topup.push_attempts < MAX_PUSH_ATTEMPTS:
            log.info("push not sent, will retry", extra={**context, **detail})
            topups.release_push(topup_id, reason=type(exc).__name__, error_code=exc.error_code,
                                error_message=exc.error_message)
            raise PushNotSentYet(type(exc).__name__, getattr(exc, "retry_after", None)) from None
        log.info("push refused", extra={**context, **detail})
        topups.record_push_refused(topup_id, error_code=exc.error_code or type(exc).__name__,
                                   error_message=exc.error_message or str(exc))
        return "refused", []
    except Exception:
        # Not a Daraja answer we understand (a bug, an unexpected library error): the
        # request may have left, so it is treated as possibly sent.
        log.exception("push failed unexpectedly", extra=context)
        topups.record_push_ambiguous(topup_id, reason="unexpected error")
        return "ambiguous", []

    callbacks = _with_database_retries(
        lambda: topups.record_push_accepted(
            topup_id, checkout_request_id=accepted.checkout_request_id,
            merchant_request_id=accepted.merchant_request_id, query_after_s=query_after_s))
    log.info("push accepted", extra={**context, "checkout_request_id": accepted.checkout_request_id})
    return "sent", callbacks


def _with_database_retries(fn, attempts: int = 5):
    """Daraja accepted a push: its CheckoutRequestID is worth a few seconds of retrying a
    database that blinked, because without it only reconciliation can find the payment."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except peewee.OperationalError:
            if attempt == attempts:
                raise
            time.sleep(min(0.2 * 2 ** attempt, 3.0))


def apply_callback(callback_seq: int) -> str:
    outcome = topups.apply_callback(callback_seq)
    log.info("callback applied", extra={"callback": callback_seq, "outcome": outcome})
    return outcome
