"""Paybill payments on PostgreSQL, threads racing in one process: the same confirmation applied
by many workers at once, and one payment arriving by three roads at once, make one credit."""
from __future__ import annotations

import threading

from ledger import accounts, c2b, db, inbox, orphans, pulls, pushes, settlement, topups
from ledger.models import (
    SUCCEEDED, Account, C2BConfirmation, LedgerEntry, OrphanPayment, TopUp, TopUpEvent, Wallet,
)
from tests.unit.c2b_support import c2b_body
from tests.unit.test_crediting import success_body

RECEIPT = "RKL51ZDR4F"


def race(*jobs):
    """Run every job on its own thread, all released at once; their results."""
    results, start = [None] * len(jobs), threading.Barrier(len(jobs))

    def run(index, job):
        with db.connection():
            start.wait()
            results[index] = job()

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def stored(body: bytes) -> int:
    return c2b.store(body, "196.201.214.200")[0]


def test_sixteen_copies_of_one_confirmation_applied_at_once_credit_once(ledger_pg):
    with db.connection():
        number = Account.get(Account.id == ledger_pg).account_number
        seqs = [stored(c2b_body(RECEIPT, number.lower(), "250.50")) for _ in range(16)]
        same = seqs[0]

    outcomes = race(*[lambda s=s: c2b.apply_stored(s, shortcode="174379") for s in seqs],
                    *[lambda: c2b.apply_stored(same, shortcode="174379")] * 4)

    assert sorted(outcomes[:16]) == ["credited"] + ["duplicate"] * 15
    with db.connection():
        assert Wallet.get(Wallet.account == ledger_pg).balance_cents == 25_050
        [topup] = list(TopUp.select().where(TopUp.channel == "c2b"))
        assert (topup.mpesa_receipt, topup.phone) == (RECEIPT, "2547 ***** 126")
        assert LedgerEntry.select().count() == 1
        assert C2BConfirmation.select().where(C2BConfirmation.applied_at.is_null()).count() == 0
        kinds = [e.kind for e in TopUpEvent.select().where(TopUpEvent.topup == topup.id)]
        assert kinds.count("credited") == 1 and kinds.count("duplicate_success") == 15


def test_a_push_paid_by_callback_c2b_and_pull_all_at_once_is_credited_once(ledger_pg):
    with db.connection():
        topup, _ = topups.create_topup(ledger_pg, amount=1000, phone="254712345678",
                                       reference="INV42", metadata={})
        pushes.claim_push(topup.id)
        pushes.record_push_accepted(topup.id, checkout_request_id="ws_CO_RACE",
                                    merchant_request_id="m", query_after_s=3600)
        callbacks = [inbox.store_callback(success_body("ws_CO_RACE", receipt=RECEIPT), None)[0]
                     .seq for _ in range(6)]
        confirmations = [stored(c2b_body(RECEIPT, "INV42", "1000.00")) for _ in range(6)]
    pulled = {"transactionId": RECEIPT, "trxDate": "2026-12-07T08:10:00Z",
              "msisdn": 254712345678, "billreference": "INV42", "amount": "1000.0"}

    def pull_row():
        with db.write_transaction():
            seq = c2b.store_pulled(pulled)
        return c2b.apply_stored(seq, shortcode="174379")

    outcomes = race(*[lambda s=s: settlement.apply_callback(s) for s in callbacks],
                    *[lambda s=s: c2b.apply_stored(s, shortcode="174379") for s in confirmations],
                    *[pull_row] * 6)

    assert outcomes.count("credited") == 1
    # a report that looked for the credit just before it committed keeps an orphan, which
    # the sweep resolves; the unique indexes refuse its credit meanwhile
    assert set(outcomes) <= {"credited", "duplicate", "orphan"}
    with db.connection(), db.write_transaction():
        orphans.resolve_credited()
    with db.connection():
        assert TopUp.get(TopUp.id == topup.id).status == SUCCEEDED
        assert Wallet.get(Wallet.account == ledger_pg).balance_cents == 100_000
        assert LedgerEntry.select().count() == 1
        assert TopUp.select().where(TopUp.channel == "c2b").count() == 0
        assert OrphanPayment.select().where(OrphanPayment.resolved_at.is_null()).count() == 0


def test_two_accounts_racing_for_one_receipt_get_one_credit(ledger_pg):
    with db.connection():
        first = Account.get(Account.id == ledger_pg)
        second, _ = accounts.create_account("second")
        seqs = [stored(c2b_body(RECEIPT, account.account_number)) for account in
                (first, second) * 5]

    outcomes = race(*[lambda s=s: c2b.apply_stored(s, shortcode="174379") for s in seqs])

    assert sorted(outcomes) == ["credited"] + ["duplicate"] * 9
    with db.connection():
        balances = [Wallet.get(Wallet.account == a).balance_cents for a in (first.id, second.id)]
        assert sorted(balances) == [0, 10_000]
        assert TopUp.select().where(TopUp.channel == "c2b").count() == 1


def test_the_pull_window_is_kept_on_postgresql(ledger_pg):
    with db.connection():
        start, end = pulls.next_window()
        run = pulls.start(start, end)
        pulls.finish(run, pages=2, transactions=3, fed=1)
        assert pulls.last_complete().window_end == end
