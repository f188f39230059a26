"""``topupctl orphans assign RECEIPT ACCOUNT_ID --reason TEXT``: prints what it credited, and
refuses a second assignment with a non-zero exit (contract §5)."""
from __future__ import annotations

import json

import pytest

from ledger import db, inbox, settlement
from ledger.models import Wallet
from tests.unit.test_crediting import success_body
from topupctl.cli import main

pytestmark = pytest.mark.both_databases


@pytest.fixture
def orphan(database):
    with db.connection():
        row, _ = inbox.store_callback(success_body("ws_CO_CLI", amount=420, receipt="CLI0RPHAN1"),
                                      "127.0.0.1")
        settlement.apply_callback(row.seq)
    return "CLI0RPHAN1"


def assign(monkeypatch, settings, *argv):
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    return main(["orphans", "assign", *argv])


def test_topupctl_assigns_an_orphan_once_and_refuses_the_second_time(
        orphan, account, other_account, settings, monkeypatch, capsys):
    assert assign(monkeypatch, settings, orphan, account["id"], "--reason", "ticket 12") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["account_id"] == account["id"] and printed["amount_cents"] == 42_000
    assert printed["reason"] == "ticket 12" and printed["assigned_by"].startswith("topupctl")

    with pytest.raises(SystemExit) as refused:
        assign(monkeypatch, settings, orphan, other_account["id"], "--reason", "again")
    assert refused.value.code not in (0, None)
    assert "assigned already" in str(refused.value.code)
    with db.connection():
        assert Wallet.get(Wallet.account == other_account["id"]).balance_cents == 0
        assert Wallet.get(Wallet.account == account["id"]).balance_cents == 42_000


def test_topupctl_wants_a_reason(orphan, account, settings, monkeypatch, capsys):
    with pytest.raises(SystemExit) as usage:
        assign(monkeypatch, settings, orphan, account["id"])
    assert usage.value.code == 2
    assert "--reason" in capsys.readouterr().err
