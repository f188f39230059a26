"""`topupctl callbacks quarantined` shows an operator every paid callback that could not be
applied, with its reason; nothing else."""
import json

import pytest

from ledger import db, inbox
from tests.unit.test_crediting import success_body
from workers import tasks

pytestmark = pytest.mark.both_databases


def test_topupctl_lists_quarantined_callbacks_with_their_reason(
        database, monkeypatch, capsys, settings):
    with db.connection():
        bad, _ = inbox.store_callback(success_body("ws_CO_BAD", amount=10 ** 9), "127.0.0.1")
        good, _ = inbox.store_callback(success_body("ws_CO_GOOD"), "127.0.0.1")
        assert tasks.apply_callback(bad.seq).startswith("quarantined:")
        assert tasks.apply_callback(good.seq) == "orphan"
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    from topupctl import cli

    cli.main(["callbacks", "quarantined", "--json"])
    listed = json.loads(capsys.readouterr().out)["data"]
    assert [(r["callback"], r["checkout_request_id"], r["reason"]) for r in listed] == [
        (bad.seq, "ws_CO_BAD", "amount above M-Pesa's largest payment")]

    cli.main(["callbacks", "quarantined"])
    text = capsys.readouterr().out
    assert "ws_CO_BAD" in text and "amount above M-Pesa's largest payment" in text
    assert "ws_CO_GOOD" not in text
