"""A callback that races its own push: its message finds no top-up for the CheckoutRequestID,
the push records it and credits the callback, and the message keeps the payment as an orphan
just after. The top-up must be credited once and the orphan resolved to it, not left for an
operator to credit a second time (seen under load in test_reconciliation)."""
from __future__ import annotations

import threading

from ledger import db, inbox, orphans, pushes, settlement, topups
from ledger.models import SUCCEEDED, LedgerEntry, OrphanPayment, TopUp, Wallet
from tests.unit.test_crediting import success_body


def test_a_callback_kept_as_orphan_while_its_push_credits_it_is_resolved_not_left(
        ledger_pg, monkeypatch):
    with db.connection():
        topup, _ = topups.create_topup(ledger_pg, amount=1000, phone="254712345678",
                                       reference=None, metadata={})
        pushes.claim_push(topup.id)
        seq, _ = inbox.store_callback(success_body("ws_CO_racing", receipt="RCPT00RACE"),
                                      "127.0.0.1")
    seq = seq.seq
    push_outcomes = []

    def push_answer_then_early_callback():
        # what workers.tasks.push does once Daraja answers: record the CheckoutRequestID,
        # then apply the callbacks already stored for it
        with db.connection():
            pushes.record_push_accepted(topup.id, checkout_request_id="ws_CO_racing",
                                        merchant_request_id="m", query_after_s=60)
            push_outcomes.append(settlement.apply_callback(seq))

    keep_orphan = orphans.keep

    def push_lands_between_the_read_and_the_orphan(*args):
        # the callback's message has read no top-up; the push commits and credits before
        # the message writes its orphan
        thread = threading.Thread(target=push_answer_then_early_callback)
        thread.start()
        thread.join()
        return keep_orphan(*args)

    monkeypatch.setattr(orphans, "keep", push_lands_between_the_read_and_the_orphan)
    with db.connection():
        message_outcome = settlement.apply_callback(seq)
    monkeypatch.setattr(orphans, "keep", keep_orphan)

    assert push_outcomes == ["credited"]
    assert message_outcome == "duplicate"
    with db.connection():
        assert TopUp.get(TopUp.id == topup.id).status == SUCCEEDED
        assert Wallet.get(Wallet.account == ledger_pg).balance_cents == 100_000
        assert LedgerEntry.select().count() == 1
        kept = list(OrphanPayment.select())
        assert [o.resolved_topup_id for o in kept] == [topup.id]
