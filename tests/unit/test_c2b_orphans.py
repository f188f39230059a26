"""A paybill payment no account took is an orphan payment like any other: listed by topupctl
orphans and the console, and placed by `topupctl orphans assign` (by its receipt), once; the
console finds an account by its account number."""
from __future__ import annotations

import json

import pytest

from ledger import accounts, c2b, db
from ledger.models import OrphanPayment, TopUp, Wallet
from tests.unit.test_console import signed_in  # noqa: F401  (fixtures)
from tests.unit.test_console import browser, console_app  # noqa: F401
from tests.unit.test_support_lookup import credited  # noqa: F401
from topupctl.cli import main

pytestmark = pytest.mark.both_databases


def kept(receipt: str, typed: str, cents: int = 30_000) -> None:
    with db.connection():
        assert c2b.settle(c2b.Payment(receipt=receipt, amount_cents=cents, bill_ref=typed,
                                      phone="2547 ***** 678", paid_at=None),
                          source=c2b.CONFIRMATION).outcome == "orphan"


@pytest.fixture
def topupctl(settings, database, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", settings.database_url)

    def run(*argv):
        main(list(argv))
        return capsys.readouterr().out

    return run


def test_a_paybill_orphan_is_assigned_by_its_receipt_once_and_the_others_stay(
        topupctl, account, other_account):
    kept("RKL51ZDR4A", "K7-QM-2O")
    kept("RKL51ZDR4B", "NOBODY", 5_000)

    assigned = json.loads(topupctl("orphans", "assign", "rkl51zdr4a", account["id"],
                                   "--reason", "customer's SMS, typed O for 0"))
    assert assigned["amount_cents"] == 30_000
    with pytest.raises(SystemExit, match="assigned already"):
        topupctl("orphans", "assign", "RKL51ZDR4A", other_account["id"], "--reason", "again")

    with db.connection():
        assert Wallet.get(Wallet.account == account["id"]).balance_cents == 30_000
        assert Wallet.get(Wallet.account == other_account["id"]).balance_cents == 0
        topup = TopUp.get(TopUp.id == assigned["topup_id"])
        assert (topup.mpesa_receipt, topup.phone) == ("RKL51ZDR4A", "2547 ***** 678")
        # assigning one paybill orphan leaves the others (none has a CheckoutRequestID) alone
        waiting = [o.mpesa_receipt for o in OrphanPayment.select()
                   .where(OrphanPayment.resolved_at.is_null())]
    assert waiting == ["RKL51ZDR4B"]
    assert [o["mpesa_receipt"] for o in json.loads(topupctl("orphans", "--json"))["data"]] == [
        "RKL51ZDR4B"]


def test_a_paybill_orphan_credited_by_another_road_cannot_be_assigned(topupctl, account):
    kept("RKL51ZDR4A", "NOBODY")
    with db.connection():
        number = accounts.create_account("meant")[0].account_number
        c2b.settle(c2b.Payment(receipt="RKL51ZDR4A", amount_cents=30_000, bill_ref=number,
                               phone=None, paid_at=None), source=c2b.STATEMENT)
    with pytest.raises(SystemExit, match="not an orphan any more"):
        topupctl("orphans", "assign", "RKL51ZDR4A", account["id"], "--reason", "twice")


def test_the_console_lists_a_paybill_orphan_with_what_was_typed(signed_in):  # noqa: F811
    kept("RKL51ZDR4A", "k7-qm29x")
    page = signed_in.get("/console/orphans").get_data(True)
    assert "RKL51ZDR4A" in page and "paybill A/C k7-qm29x" in page and "None" not in page
    assign = signed_in.get("/console/orphans/RKL51ZDR4A/assign").get_data(True)
    assert "k7-qm29x" in assign and "no account has this account number" in assign


def test_the_console_finds_an_account_by_its_account_number(signed_in, credited):  # noqa: F811
    with db.connection():
        number = accounts.Account.get(accounts.Account.id == credited["account"]).account_number
    page = signed_in.get("/console/topups", query_string={"q": f"{number[:3].lower()} "
                                                               f"{number[3:]}"})
    assert page.status_code == 200 and credited["topup"] in page.get_data(True)


def test_an_assigned_paybill_orphan_is_a_c2b_top_up(topupctl, account):
    kept("RKL51ZDR4A", "NOBODY")
    assigned = json.loads(topupctl("orphans", "assign", "RKL51ZDR4A", account["id"],
                                   "--reason", "ticket 7"))
    with db.connection():
        assert TopUp.get(TopUp.id == assigned["topup_id"]).channel == "c2b"
