"""topupctl topups show KEY: one top-up found by its id, CheckoutRequestID, M-Pesa receipt or
phone, with its whole history in order, phones masked."""
from __future__ import annotations

import json

import pytest

from ledger import accounts, db, history, inbox, pushes, settlement, topups
from tests.unit.test_crediting import success_body
from topupctl.cli import main

pytestmark = pytest.mark.both_databases


@pytest.fixture
def credited(database):
    """A top-up pushed, answered, called back twice (once a duplicate) and credited."""
    with db.connection():
        account, _ = accounts.create_account("support")
        topup, _ = topups.create_topup(account.id, amount=1000, phone="254712345678",
                                       reference="INV42", metadata={})
        pushes.claim_push(topup.id)
        pushes.record_push_accepted(topup.id, checkout_request_id="ws_CO_SUPPORT_1",
                                    merchant_request_id="m-1", query_after_s=60)
        for _ in range(2):
            row, _ = inbox.store_callback(success_body("ws_CO_SUPPORT_1", receipt="QWE1234567"),
                                          "196.201.214.200")
            settlement.apply_callback(row.seq)
    return {"account": account.id, "topup": topup.id}


KEYS = {"id": lambda t: t, "checkout_request_id": lambda t: "ws_CO_SUPPORT_1",
        "mpesa_receipt": lambda t: "QWE1234567", "phone": lambda t: "0712 345 678"}


@pytest.mark.parametrize("kind", list(KEYS))
def test_each_kind_of_key_finds_the_topup(credited, kind):
    with db.connection():
        found = history.find(KEYS[kind](credited["topup"]))
    assert found.topup.id == credited["topup"]
    assert found.matched_by == kind


def test_the_history_tells_the_story_in_order(credited):
    with db.connection():
        steps = history.history(history.find(credited["topup"]).topup)
    kinds = [s.kind for s in steps]
    assert kinds[:2] == ["requested", "push_accepted"]
    assert kinds.count("callback") == 2
    assert kinds.index("callback") < kinds.index("ledger_entry") < kinds.index("credited")
    assert "duplicate_success" in kinds
    assert [s.at for s in steps] == sorted(s.at for s in steps)
    [entry] = [s for s in steps if s.kind == "ledger_entry"]
    assert entry.detail["amount_cents"] == 100_000 and entry.detail["mpesa_receipt"] == "QWE1234567"


def show(monkeypatch, settings, capsys, *argv):
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    main(["topups", "show", *argv])
    return capsys.readouterr().out


def test_topupctl_prints_the_same_history_whichever_key_is_given(credited, settings,
                                                                 monkeypatch, capsys):
    outputs = {kind: show(monkeypatch, settings, capsys, key(credited["topup"]))
               for kind, key in KEYS.items()}
    assert len(set(outputs.values())) == 1
    text = outputs["id"]
    assert credited["topup"] in text and "ws_CO_SUPPORT_1" in text and "QWE1234567" in text
    for step in ("requested", "push_accepted", "callback", "ledger_entry", "credited"):
        assert step in text
    assert "2547****5678" in text
    assert "712345678" not in text and "712 345 678" not in text


def test_topupctl_can_answer_in_json(credited, settings, monkeypatch, capsys):
    document = json.loads(show(monkeypatch, settings, capsys, "qwe1234567", "--json"))
    assert document["matched_by"] == "mpesa_receipt"
    assert document["topup"]["status"] == "succeeded"
    assert document["topup"]["phone"] == "2547****5678"
    assert [s["kind"] for s in document["history"]][0] == "requested"


def test_a_phone_with_several_topups_shows_the_newest_and_lists_the_others(credited, database):
    with db.connection():
        newer, _ = topups.create_topup(credited["account"], amount=50, phone="254712345678",
                                       reference=None, metadata={})
        found = history.find("+254712345678")
    assert found.topup.id == newer.id
    assert [t.id for t in found.others] == [credited["topup"]]


def test_money_no_topup_asked_for_is_shown_as_an_orphan_payment(database):
    with db.connection():
        row, _ = inbox.store_callback(success_body("ws_CO_NOBODY", receipt="ORPH000001"),
                                      "127.0.0.1")
        settlement.apply_callback(row.seq)
        found = history.find("ORPH000001")
    assert found.topup is None and found.matched_by == "orphan_payment"
    assert found.orphan.checkout_request_id == "ws_CO_NOBODY"


def test_an_unknown_key_says_so_without_echoing_a_phone(database, settings, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    with pytest.raises(SystemExit) as exit_:
        main(["topups", "show", "0799 999 999"])
    assert "2547****9999" in str(exit_.value) and "799999999" not in str(exit_.value)
