"""Reconciliation knows paybill payments: a statement row of a C2B payment is matched to its
credit by receipt with the account number from A/C No.; --apply credits a paid but
uncredited row to the account it names, or keeps it as an orphan payment."""
from __future__ import annotations

import datetime as dt

import pytest
import requests

from ledger import accounts, c2b, db, reconcile
from ledger.models import Account, LedgerEntry, OrphanPayment, TopUp, TopUpEvent, Wallet, utcnow
from ledger.statement import parse
from tests.unit.test_reconcile import EAT, HEADER

pytestmark = pytest.mark.both_databases

RECEIPT = "RKL51ZDR4F"


@pytest.fixture
def acme(database):
    with db.connection():
        yield accounts.create_account("acme")[0]


def paybill_line(receipt, account_no, amount, *, reason="Pay Bill", phone="254712345678"):
    stamp = utcnow().replace(tzinfo=dt.timezone.utc).astimezone(EAT).strftime("%d-%m-%Y %H:%M:%S")
    return (f'{receipt},{stamp},{stamp},{reason} from {phone} - CUSTOMER Acc. {account_no},'
            f'Completed,"{amount:,.2f}",,"9,999.00",true,{reason},{phone} - CUSTOMER,,'
            f'{account_no}')


def statement(*lines):
    return parse(("\ufeff" + "\r\n".join([HEADER, *lines]) + "\r\n").encode())


def confirmed(bill_ref, receipt=RECEIPT, cents=100_000) -> str:
    return c2b.settle(c2b.Payment(receipt=receipt, amount_cents=cents, bill_ref=bill_ref,
                                  phone="2547 ***** 678", paid_at=None),
                      source=c2b.CONFIRMATION).outcome


def balance(account_id):
    return Wallet.get(Wallet.account == account_id).balance_cents


def test_a_paybill_credit_is_matched_by_receipt_with_its_account(acme):
    assert confirmed(acme.account_number) == "credited"
    report = reconcile.run(statement(paybill_line(RECEIPT, acme.account_number.lower(), 1000)))
    [matched] = report["matched"]
    assert (matched["by"], matched["account"], matched["account_no"]) == (
        "receipt", acme.id, acme.account_number.lower())
    assert report["paid_not_credited"] == [] and report["accounts_differ"] == []


def test_a_paybill_row_naming_another_account_than_the_one_credited_is_reported(acme):
    other = accounts.create_account("other")[0]
    assert confirmed(acme.account_number) == "credited"
    report = reconcile.run(statement(paybill_line(RECEIPT, other.account_number, 1000)))
    [differs] = report["accounts_differ"]
    assert (differs["account"], differs["account_no_names"]) == (acme.id, other.id)
    assert balance(acme.id) == 100_000 and balance(other.id) == 0


def test_a_paybill_payment_whose_confirmation_was_lost_is_credited_once_with_apply(acme):
    stmt = statement(paybill_line(RECEIPT, acme.account_number, 1000.5))

    found = reconcile.run(stmt)
    [item] = found["paid_not_credited"]
    assert (item["action"], item["belongs_to"]["account"]) == ("apply", acme.id)
    assert balance(acme.id) == 0

    applied = reconcile.run(stmt, apply_safe=True)
    assert [a["outcome"] for a in applied["applied"]] == ["credited"]
    assert applied["applied"][0]["account"] == acme.id
    assert balance(acme.id) == 100_050
    [topup] = list(TopUp.select().where(TopUp.channel == "c2b"))
    assert topup.mpesa_receipt == RECEIPT
    assert "reconciled" in [e.kind for e in TopUpEvent.select().where(TopUpEvent.topup == topup.id)]
    assert LedgerEntry.get(LedgerEntry.mpesa_receipt == RECEIPT).source == "statement"

    again = reconcile.run(stmt, apply_safe=True)
    assert again["applied"] == [] and [m["receipt"] for m in again["matched"]] == [RECEIPT]
    assert balance(acme.id) == 100_050


def test_a_confirmation_that_arrives_between_finding_and_applying_credits_once(acme):
    found = reconcile.find(statement(paybill_line(RECEIPT, acme.account_number, 1000)))
    assert confirmed(acme.account_number) == "credited"
    assert [a["outcome"] for a in reconcile.apply(found, "rc_test")] == ["duplicate"]
    assert balance(acme.id) == 100_000


def test_a_paybill_row_no_account_has_is_kept_as_an_orphan_with_apply(acme):
    stmt = statement(paybill_line(RECEIPT, "NOBODY1", 250))
    [item] = reconcile.run(stmt)["paid_not_credited"]
    assert item["action"] == "apply" and "no account has" in item["reason"]

    report = reconcile.run(stmt, apply_safe=True)
    assert report["paid_not_credited"][0]["action"] == "kept_as_orphan"
    [orphan] = list(OrphanPayment.select())
    assert (orphan.mpesa_receipt, orphan.bill_ref_number, orphan.amount_cents,
            orphan.checkout_request_id) == (RECEIPT, "NOBODY1", 25_000, None)

    [again] = reconcile.run(stmt, apply_safe=True)["paid_not_credited"]
    assert again["action"] == "reported" and "kept as an orphan" in again["reason"]
    assert OrphanPayment.select().count() == 1 and balance(acme.id) == 0


def test_a_push_row_nothing_fits_is_still_only_reported(acme):
    [item] = reconcile.run(statement(paybill_line(RECEIPT, "NOBODY1", 250,
                                                  reason="Pay Bill Online")),
                           apply_safe=True)["paid_not_credited"]
    assert (item["belongs_to"], item["action"]) == (None, "reported")
    assert OrphanPayment.select().count() == 0


def test_the_simulators_statement_of_a_dropped_confirmation_reconciles_to_a_credit(
        stk, daraja_sim, account_id):
    stk.daraja.register_c2b_urls(shortcode="174379",
                                 confirmation_url="http://127.0.0.1:9/daraja/c2b/c",
                                 validation_url="http://127.0.0.1:9/daraja/c2b/v")
    with db.connection():
        typed = Account.get(Account.id == account_id).account_number
    paid = requests.post(f"{daraja_sim.url}/__sim/c2b/pay", timeout=10,
                         json={"account_number": typed, "amount": 321}).json()
    csv = requests.get(f"{daraja_sim.url}/__sim/statement.csv", timeout=10).content
    with db.connection():
        report = reconcile.run(parse(csv), apply_safe=True)
        assert [a["outcome"] for a in report["applied"]] == ["credited"]
        assert balance(account_id) == 32_100
        assert LedgerEntry.get().mpesa_receipt == paid["receipt"]


def test_the_report_for_a_person_says_what_apply_does_with_a_paybill_row(acme):
    from topupctl.reconcile import render
    other = accounts.create_account("other")[0]
    assert confirmed(acme.account_number, receipt="RKL51ZDR4A") == "credited"
    text = render(reconcile.run(statement(
        paybill_line("RKL51ZDR4A", other.account_number, 1000),
        paybill_line("RKL51ZDR4B", acme.account_number, 20),
        paybill_line("RKL51ZDR4C", "NOBODY1", 30))))
    assert f"RKL51ZDR4A  line 2  credited to {acme.id}" in text
    assert f"account {acme.id} ({acme.account_number}): safe, --apply credits it" in text
    assert "RKL51ZDR4C" in text and "--apply keeps it as an orphan" in text
