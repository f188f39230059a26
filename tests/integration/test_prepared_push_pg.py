"""The request's and the push's hand-written statements (``ledger/topups.py``) are
server-side prepared on PostgreSQL outside a transaction, and behave the same after the
server forgot them (DEALLOCATE ALL, DISCARD ALL, a new connection) and inside a caller's
transaction, where they are sent as text."""
from __future__ import annotations

import pytest

from ledger import db, prepared, topups
from ledger.models import PUSH_SENDING, PUSH_SENT, TopUp, TopUpEvent
from tests.unit.test_crediting import success_body

HOT = {"topup_create", "topup_push_state", "topup_claim_push"}


def a_push(account_id: str, checkout: str, *, key: str | None = None) -> tuple[str, list[int]]:
    """A top-up requested, its push read and claimed, Daraja's answer recorded."""
    topup, created = topups.create_topup(account_id, amount=100, phone="254712345678",
                                         reference=None, metadata={"n": 1},
                                         idempotency_key=key, request_fingerprint="f")
    assert created
    assert topups.push_state(topup.id) == ("pending", "queued", "254712345678")
    claimed = topups.claim_push(topup.id)
    assert claimed.push_attempts == 1 and claimed.amount == 100
    assert topups.claim_push(topup.id) is None
    early = topups.record_push_accepted(topup.id, checkout_request_id=checkout,
                                        merchant_request_id="m", query_after_s=60)
    row = TopUp.get(TopUp.id == topup.id)
    assert (row.push_state, row.checkout_request_id) == (PUSH_SENT, checkout)
    kinds = [e.kind for e in TopUpEvent.select().where(TopUpEvent.topup == topup.id)
             .order_by(TopUpEvent.seq)]
    assert kinds == ["requested", "push_accepted"]
    return topup.id, early


def server_prepared() -> set[str]:
    cursor = db.database.execute_sql("SELECT name FROM pg_prepared_statements")
    return {name for (name,) in cursor.fetchall()} & HOT


def test_on_postgresql_the_request_and_push_statements_are_server_prepared(ledger_pg):
    with db.connection():
        a_push(ledger_pg, "ws_CO_prep1")
        assert server_prepared() == HOT
        assert HOT <= prepared._server_prepared[db.database.connection()]


@pytest.mark.parametrize("forget", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_the_request_and_push_still_work_after_the_server_forgot_its_prepared_statements(
        ledger_pg, forget):
    with db.connection():
        stored, _ = topups.store_callback(success_body("ws_CO_prep3", receipt="RCPT000031"),
                                          "127.0.0.1")
        a_push(ledger_pg, "ws_CO_prep2", key="k1")
        db.database.execute_sql(forget)  # as a pooler resetting the session would
        assert server_prepared() == set()
        _, early = a_push(ledger_pg, "ws_CO_prep3", key="k2")
        assert early == [stored.seq]  # the callback that beat the push's answer
        assert server_prepared() == HOT
        # an idempotency key's collision on the prepared INSERT is still the first top-up
        again, created = topups.create_topup(ledger_pg, amount=100, phone="254712345678",
                                             reference=None, metadata={"n": 1},
                                             idempotency_key="k2", request_fingerprint="f")
        assert not created and again.checkout_request_id == "ws_CO_prep3"
        with pytest.raises(topups.IdempotencyConflict):
            topups.create_topup(ledger_pg, amount=200, phone="254712345678", reference=None,
                                metadata={}, idempotency_key="k2", request_fingerprint="g")


def test_the_request_and_push_work_on_a_new_connection_that_never_prepared_them(ledger_pg):
    with db.connection():
        a_push(ledger_pg, "ws_CO_prep4")
    db.database.close_all()  # the pool's connections closed: the next one is new
    with db.connection():
        assert server_prepared() == set()
        a_push(ledger_pg, "ws_CO_prep5")
        assert server_prepared() == HOT
    with db.connection():
        assert TopUp.select().where(TopUp.push_state == PUSH_SENT).count() == 2


def test_inside_a_callers_transaction_they_are_sent_as_text_and_roll_back_with_it(ledger_pg):
    with db.connection():
        db.database.execute_sql("DEALLOCATE ALL")
        prepared._server_prepared.pop(db.database.connection(), None)
        with pytest.raises(RuntimeError):
            with db.write_transaction():
                topup, _ = topups.create_topup(ledger_pg, amount=100, phone="254712345678",
                                               reference=None, metadata={})
                assert topups.push_state(topup.id)[1] == "queued"
                assert topups.claim_push(topup.id) is not None
                assert TopUp.get(TopUp.id == topup.id).push_state == PUSH_SENDING
                assert topups.record_push_accepted(
                    topup.id, checkout_request_id="ws_CO_prep6", merchant_request_id="m",
                    query_after_s=60) == []
                raise RuntimeError("the caller failed")
        assert server_prepared() == set()
        assert TopUp.select().count() == 0 and TopUpEvent.select().count() == 0


def test_a_prepared_claim_whose_answer_was_lost_is_put_back_by_its_own_timestamp(ledger_pg):
    # workers.tasks.push undoes a claim it did not hear, by the push_started_at it sent: the
    # prepared claim must store that timestamp exactly for the undo to find it
    from ledger.models import PUSH_QUEUED, utcnow
    with db.connection():
        topup, _ = topups.create_topup(ledger_pg, amount=100, phone="254712345678",
                                       reference=None, metadata={})
        claimed_at = utcnow()
        assert topups.claim_push(topup.id, now=claimed_at) is not None
        assert topups.unclaim_push(topup.id, claimed_at.replace(microsecond=1)) is False
        assert topups.unclaim_push(topup.id, claimed_at) is True
        assert TopUp.get(TopUp.id == topup.id).push_state == PUSH_QUEUED
        assert topups.claim_push(topup.id) is not None   # the retry claims it again
