"""The credit on PostgreSQL keeps every "at most once": a receipt credits once, a top-up
credits once, a callback applied by many workers at once credits once, and the credit is all
written or not at all."""
from __future__ import annotations

import threading

import pytest

from ledger import db, inbox, pushes, settlement, topups
from ledger.models import PENDING, SUCCEEDED, Callback, LedgerEntry, TopUp, TopUpEvent, Wallet
from tests.unit.test_crediting import success_body


def pushed(account_id: str, checkout: str) -> str:
    topup, _ = topups.create_topup(account_id, amount=1000, phone="254712345678",
                                   reference=None, metadata={})
    pushes.claim_push(topup.id)
    pushes.record_push_accepted(topup.id, checkout_request_id=checkout,
                                merchant_request_id="m", query_after_s=60)
    return topup.id


def stored(body: bytes) -> int:
    row, _ = inbox.store_callback(body, "127.0.0.1")
    return row.seq


def balance(account_id: str) -> int:
    return Wallet.get(Wallet.account == account_id).balance_cents


def test_a_paid_callback_credits_and_marks_the_callback_applied(ledger_pg):
    with db.connection():
        topup_id = pushed(ledger_pg, "ws_CO_one")
        seq = stored(success_body("ws_CO_one", receipt="RCPT000001"))
        assert settlement.apply_callback(seq) == "credited"
        topup = TopUp.get(TopUp.id == topup_id)
        assert topup.status == SUCCEEDED and topup.mpesa_receipt == "RCPT000001"
        entry = LedgerEntry.get(LedgerEntry.topup == topup_id)
        assert entry.balance_after_cents == balance(ledger_pg) == 100_000
        assert Callback.get(Callback.seq == seq).outcome == "credited"


def test_a_credited_receipt_is_refused_under_another_checkout_request(ledger_pg):
    with db.connection():
        pushed(ledger_pg, "ws_CO_a")
        second = pushed(ledger_pg, "ws_CO_b")
        assert settlement.apply_callback(stored(success_body("ws_CO_a", receipt="RCPT000002"))) \
            == "credited"
        assert settlement.apply_callback(stored(success_body("ws_CO_b", receipt="RCPT000002"))) \
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
            outcomes.append(settlement.apply_callback(seq))

    threads = [threading.Thread(target=apply) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["credited"] + ["duplicate"] * 7
    with db.connection():
        assert balance(ledger_pg) == 100_000
        assert LedgerEntry.select().where(LedgerEntry.topup == topup_id).count() == 1


def test_a_query_credit_gets_its_receipt_from_the_callback_once(ledger_pg):
    with db.connection():
        topup_id = pushed(ledger_pg, "ws_CO_q")
        assert settlement.settle_success("ws_CO_q", amount_cents=None, receipt=None, phone=None,
                                         source="query") == "credited"
        assert settlement.apply_callback(stored(success_body("ws_CO_q", receipt="RCPT000004"))) \
            == "receipt_filled"
        assert balance(ledger_pg) == 100_000
        entry = LedgerEntry.get(LedgerEntry.topup == topup_id)
        assert entry.mpesa_receipt == "RCPT000004" and entry.source == "query"


def test_a_credit_that_cannot_reach_the_wallet_leaves_the_topup_pending(ledger_pg):
    with db.connection():
        topup_id = pushed(ledger_pg, "ws_CO_nowallet")
        Wallet.delete().where(Wallet.account == ledger_pg).execute()
        seq = stored(success_body("ws_CO_nowallet", receipt="RCPT000005"))
        with pytest.raises(Wallet.DoesNotExist):
            settlement.apply_callback(seq)
        assert TopUp.get(TopUp.id == topup_id).status == PENDING
        assert LedgerEntry.select().count() == 0
        assert Callback.get(Callback.seq == seq).applied_at is None


def test_callbacks_racing_to_fill_a_query_credited_receipt_record_it_once(ledger_pg):
    with db.connection():
        topup_id = pushed(ledger_pg, "ws_CO_fill")
        assert settlement.settle_success("ws_CO_fill", amount_cents=None, receipt=None, phone=None,
                                         source="query") == "credited"
        seqs = [stored(success_body("ws_CO_fill", receipt="RCPT000009")) for _ in range(8)]
    outcomes, start = [], threading.Barrier(8)

    def apply(seq):
        with db.connection():
            start.wait()
            outcomes.append(settlement.apply_callback(seq))

    threads = [threading.Thread(target=apply, args=(seq,)) for seq in seqs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["duplicate"] * 7 + ["receipt_filled"]
    with db.connection():
        kinds = [e.kind for e in TopUpEvent.select().where(TopUpEvent.topup == topup_id)]
        assert kinds.count("receipt_filled") == 1 and kinds.count("duplicate_success") == 7
        assert balance(ledger_pg) == 100_000
