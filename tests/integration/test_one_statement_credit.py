"""The credit on PostgreSQL as one statement (``ledger/credit_pg.py``) keeps every "at most
once" of the generic path: a receipt credits once, a top-up credits once, a callback applied
by many workers at once credits once, and the credit is all written or not at all."""
from __future__ import annotations

import threading

import pytest

from ledger import credit_pg, db, topups
from ledger.models import PENDING, SUCCEEDED, Callback, LedgerEntry, TopUp, Wallet
from tests.unit.test_crediting import success_body


def pushed(account_id: str, checkout: str) -> str:
    topup, _ = topups.create_topup(account_id, amount=1000, phone="254712345678",
                                   reference=None, metadata={})
    topups.claim_push(topup.id)
    topups.record_push_accepted(topup.id, checkout_request_id=checkout,
                                merchant_request_id="m", query_after_s=60)
    return topup.id


def stored(body: bytes) -> int:
    row, _ = topups.store_callback(body, "127.0.0.1")
    return row.seq


def balance(account_id: str) -> int:
    return Wallet.get(Wallet.account == account_id).balance_cents


def test_a_paid_callback_credits_in_one_statement_and_marks_the_callback_applied(ledger_pg):
    with db.connection():
        topup_id = pushed(ledger_pg, "ws_CO_one")
        seq = stored(success_body("ws_CO_one", receipt="RCPT000001"))
        outcome, credited = topups.apply_callback_settling(seq)
        assert outcome == "credited" and credited is not None
        assert credited.topup_id == topup_id and credited.balance_cents == 100_000
        topup = TopUp.get(TopUp.id == topup_id)
        assert topup.status == SUCCEEDED and topup.mpesa_receipt == "RCPT000001"
        entry = LedgerEntry.get(LedgerEntry.topup == topup_id)
        assert entry.balance_after_cents == balance(ledger_pg) == 100_000
        assert Callback.get(Callback.seq == seq).outcome == "credited"


def test_a_receipt_credited_in_one_statement_is_refused_under_another_checkout_request(
        ledger_pg):
    with db.connection():
        pushed(ledger_pg, "ws_CO_a")
        second = pushed(ledger_pg, "ws_CO_b")
        assert topups.apply_callback(stored(success_body("ws_CO_a", receipt="RCPT000002"))) \
            == "credited"
        # the statement itself refuses the receipt, and writes nothing
        assert credit_pg.credit("ws_CO_b", 100_000, "RCPT000002", None, "callback") is None
        assert topups.apply_callback(stored(success_body("ws_CO_b", receipt="RCPT000002"))) \
            == "receipt_conflict"
        assert balance(ledger_pg) == 100_000 and LedgerEntry.select().count() == 1
        assert TopUp.get(TopUp.id == second).status == PENDING


def test_one_callback_applied_by_eight_threads_at_once_credits_once(ledger_pg):
    with db.connection():
        topup_id = pushed(ledger_pg, "ws_CO_race")
        seq = stored(success_body("ws_CO_race", receipt="RCPT000003"))
    outcomes, start = [], threading.Barrier(8)

    def apply():
        with db.connection():
            start.wait()
            outcomes.append(topups.apply_callback(seq))

    threads = [threading.Thread(target=apply) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["credited"] + ["duplicate"] * 7
    with db.connection():
        assert balance(ledger_pg) == 100_000
        assert LedgerEntry.select().where(LedgerEntry.topup == topup_id).count() == 1


def test_a_query_credit_in_one_statement_gets_its_receipt_from_the_callback_once(ledger_pg):
    with db.connection():
        topup_id = pushed(ledger_pg, "ws_CO_q")
        assert topups.settle_success("ws_CO_q", amount_cents=None, receipt=None, phone=None,
                                     source="query") == "credited"
        assert topups.apply_callback(stored(success_body("ws_CO_q", receipt="RCPT000004"))) \
            == "receipt_filled"
        assert balance(ledger_pg) == 100_000
        entry = LedgerEntry.get(LedgerEntry.topup == topup_id)
        assert entry.mpesa_receipt == "RCPT000004" and entry.source == "query"


def test_a_credit_that_cannot_reach_the_wallet_leaves_the_topup_pending(ledger_pg):
    with db.connection():
        topup_id = pushed(ledger_pg, "ws_CO_nowallet")
        Wallet.delete().where(Wallet.account == ledger_pg).execute()
        seq = stored(success_body("ws_CO_nowallet", receipt="RCPT000005"))
        assert credit_pg.credit("ws_CO_nowallet", 100_000, "RCPT000005", None, "callback",
                                mark_applied=seq) is None
        with pytest.raises(Wallet.DoesNotExist):
            topups.apply_callback(seq)
        assert TopUp.get(TopUp.id == topup_id).status == PENDING
        assert LedgerEntry.select().count() == 0
        assert Callback.get(Callback.seq == seq).applied_at is None


def test_a_credit_still_goes_through_after_the_server_forgot_the_prepared_statements(ledger_pg):
    with db.connection():
        pushed(ledger_pg, "ws_CO_p1")
        second = pushed(ledger_pg, "ws_CO_p2")
        assert topups.apply_callback(stored(success_body("ws_CO_p1", receipt="RCPT000006"))) \
            == "credited"
        db.database.execute_sql("DEALLOCATE ALL")  # as a pooler resetting the session would
        assert topups.apply_callback(stored(success_body("ws_CO_p2", receipt="RCPT000007"))) \
            == "credited"
        assert TopUp.get(TopUp.id == second).status == SUCCEEDED
        assert balance(ledger_pg) == 200_000
