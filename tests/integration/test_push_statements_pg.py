"""The request's and the push's statements (``ledger/topups.py``, ``ledger/pushes.py``) on PostgreSQL: a push is
requested, claimed once and answered; an idempotency key's collision gives back the first
top-up; inside a caller's transaction they roll back with it; a claim whose answer was lost
is put back by its own timestamp only."""
from __future__ import annotations

import pytest

from ledger import db, inbox, pushes, topups
from ledger.models import PUSH_SENDING, PUSH_SENT, TopUp, TopUpEvent
from tests.unit.test_crediting import success_body


def a_push(account_id: str, checkout: str, *, key: str | None = None) -> tuple[str, list[int]]:
    """A top-up requested, its push read and claimed, Daraja's answer recorded."""
    topup, created = topups.create_topup(account_id, amount=100, phone="254712345678",
                                         reference=None, metadata={"n": 1},
                                         idempotency_key=key, request_fingerprint="f")
    assert created
    assert pushes.push_state(topup.id) == ("pending", "queued", "254712345678")
    claimed = pushes.claim_push(topup.id)
    assert claimed.push_attempts == 1 and claimed.amount == 100
    assert pushes.claim_push(topup.id) is None
    early = pushes.record_push_accepted(topup.id, checkout_request_id=checkout,
                                        merchant_request_id="m", query_after_s=60)
    row = TopUp.get(TopUp.id == topup.id)
    assert (row.push_state, row.checkout_request_id) == (PUSH_SENT, checkout)
    kinds = [e.kind for e in TopUpEvent.select().where(TopUpEvent.topup == topup.id)
             .order_by(TopUpEvent.seq)]
    assert kinds == ["requested", "push_accepted"]
    return topup.id, early


def test_a_push_is_claimed_once_and_an_idempotency_key_gives_back_the_first_topup(ledger_pg):
    with db.connection():
        stored, _ = inbox.store_callback(success_body("ws_CO_prep3", receipt="RCPT000031"),
                                         "127.0.0.1")
        a_push(ledger_pg, "ws_CO_prep2", key="k1")
        _, early = a_push(ledger_pg, "ws_CO_prep3", key="k2")
        assert early == [stored.seq]  # the callback that beat the push's answer
        again, created = topups.create_topup(ledger_pg, amount=100, phone="254712345678",
                                             reference=None, metadata={"n": 1},
                                             idempotency_key="k2", request_fingerprint="f")
        assert not created and again.checkout_request_id == "ws_CO_prep3"
        with pytest.raises(topups.IdempotencyConflict):
            topups.create_topup(ledger_pg, amount=200, phone="254712345678", reference=None,
                                metadata={}, idempotency_key="k2", request_fingerprint="g")


def test_inside_a_callers_transaction_they_are_sent_as_text_and_roll_back_with_it(ledger_pg):
    with db.connection():
        with pytest.raises(RuntimeError):
            with db.write_transaction():
                topup, _ = topups.create_topup(ledger_pg, amount=100, phone="254712345678",
                                               reference=None, metadata={})
                assert pushes.push_state(topup.id)[1] == "queued"
                assert pushes.claim_push(topup.id) is not None
                assert TopUp.get(TopUp.id == topup.id).push_state == PUSH_SENDING
                assert pushes.record_push_accepted(
                    topup.id, checkout_request_id="ws_CO_prep6", merchant_request_id="m",
                    query_after_s=60) == []
                raise RuntimeError("the caller failed")
        assert TopUp.select().count() == 0 and TopUpEvent.select().count() == 0


def test_a_claim_whose_answer_was_lost_is_put_back_by_its_own_timestamp(ledger_pg):
    # workers.tasks.push undoes a claim it did not hear, by the push_started_at it sent: the
    # claim must store that timestamp exactly for the undo to find it
    from ledger.models import PUSH_QUEUED, utcnow
    with db.connection():
        topup, _ = topups.create_topup(ledger_pg, amount=100, phone="254712345678",
                                       reference=None, metadata={})
        claimed_at = utcnow()
        assert pushes.claim_push(topup.id, now=claimed_at) is not None
        assert pushes.unclaim_push(topup.id, claimed_at.replace(microsecond=1)) is False
        assert pushes.unclaim_push(topup.id, claimed_at) is True
        assert TopUp.get(TopUp.id == topup.id).push_state == PUSH_QUEUED
        assert pushes.claim_push(topup.id) is not None   # the retry claims it again
