"""The push, the top-up request and the webhook attempt, written as hand-made statements
(``ledger/topups.py``, ``ledger/webhooks.py``), keep their "at most once" on PostgreSQL when
many workers or requests race: one prompt per push, one top-up per idempotency key, one
attempt per claim of a delivery."""
from __future__ import annotations

import threading

import pytest

from ledger import db, events, pushes, topups, webhooks
from ledger.models import PUSH_SENDING, TopUp, TopUpEvent, WebhookAttempt, WebhookDelivery


def at_once(n: int, work) -> list:
    """``work()`` in n threads released together, each on its own connection."""
    results, start = [None] * n, threading.Barrier(n)

    def run(i):
        start.wait()
        with db.connection():
            try:
                results[i] = work()
            except Exception as exc:  # noqa: BLE001 - reported by the assertions
                results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_a_push_claimed_by_eight_workers_at_once_is_claimed_once(ledger_pg):
    with db.connection():
        topup, _ = topups.create_topup(ledger_pg, amount=100, phone="254712345678",
                                       reference=None, metadata={})
    claims = at_once(8, lambda: pushes.claim_push(topup.id))
    won = [c for c in claims if c is not None]
    assert len(won) == 1 and won[0].push_attempts == 1 and won[0].phone == "254712345678"
    with db.connection():
        row = TopUp.get(TopUp.id == topup.id)
        assert row.push_state == PUSH_SENDING and row.push_attempts == 1


def test_one_idempotency_key_sent_by_eight_requests_at_once_creates_one_topup(ledger_pg):
    def request():
        return topups.create_topup(ledger_pg, amount=100, phone="254712345678",
                                   reference=None, metadata={"order": 7},
                                   idempotency_key="same-key", request_fingerprint="f1")
    answers = at_once(8, request)
    assert all(isinstance(a, tuple) for a in answers), answers
    assert len({topup.id for topup, _ in answers}) == 1
    assert sum(created for _, created in answers) == 1
    with db.connection():
        assert TopUp.select().count() == 1
        assert TopUpEvent.select().where(TopUpEvent.kind == "requested").count() == 1
        with pytest.raises(topups.IdempotencyConflict):
            topups.create_topup(ledger_pg, amount=200, phone="254712345678", reference=None,
                                metadata={}, idempotency_key="same-key",
                                request_fingerprint="f2")


def test_a_delivery_claimed_by_eight_workers_at_once_is_attempted_once(ledger_pg):
    with db.connection(), db.write_transaction():
        webhooks.create_endpoint(ledger_pg, "https://example.com/hooks", ["wallet.top_up"])
        events.publish(ledger_pg, "wallet.top_up", {"n": 1})
    with db.connection():
        delivery = WebhookDelivery.get()
    claims = at_once(8, lambda: webhooks.claim(delivery.id, now=delivery.next_attempt_at))
    won = [c for c in claims if c is not None]
    assert len(won) == 1 and won[0].attempt == 1, claims
    with db.connection():
        assert webhooks.record_attempt(won[0], status_code=200, error=None,
                                       duration_ms=3) == ("delivered", None)
        # the same attempt recorded again changes nothing of the delivery, and is kept
        assert webhooks.record_attempt(won[0], status_code=500, error="HTTP 500",
                                       duration_ms=3) == ("superseded", None)
        row = WebhookDelivery.get(WebhookDelivery.id == delivery.id)
        assert row.attempts == 1 and row.status == "delivered" and row.last_status_code == 200
        assert WebhookAttempt.select().where(WebhookAttempt.delivery == delivery.id).count() == 2
