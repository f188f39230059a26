"""The API key lookup every /v1 request runs (``ledger/accounts.py``) is server-side prepared on
PostgreSQL, and answers the same after the server forgot it, inside a transaction, and the
moment a key is revoked."""
from __future__ import annotations

import pytest

from ledger import accounts, db


def prepared_names() -> set[str]:
    cursor = db.database.execute_sql("SELECT name FROM pg_prepared_statements")
    return {name for (name,) in cursor.fetchall()}


def test_on_postgresql_the_key_lookup_is_server_prepared_and_finds_the_account(ledger_pg):
    with db.connection():
        _, key = accounts.create_api_key(ledger_pg)
        found = accounts.authenticate(key)
        assert found is not None and found.id == ledger_pg and found.name == "hot"
        assert "api_key_account" in prepared_names()
        assert accounts.authenticate(key[:-1] + ("x" if key[-1] != "x" else "y")) is None


@pytest.mark.parametrize("forget", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_the_key_lookup_still_answers_after_the_server_forgot_it(ledger_pg, forget):
    with db.connection():
        _, key = accounts.create_api_key(ledger_pg)
        assert accounts.authenticate(key).id == ledger_pg
        db.database.execute_sql(forget)   # as a pooler resetting the session would
        assert accounts.authenticate(key).id == ledger_pg
        assert "api_key_account" in prepared_names()


def test_a_revoked_key_is_refused_at_once_and_inside_a_transaction_too(ledger_pg):
    with db.connection():
        row, key = accounts.create_api_key(ledger_pg)
        assert accounts.authenticate(key).id == ledger_pg
        with db.database.atomic():   # sent as text there, with the same answer
            assert accounts.authenticate(key).id == ledger_pg
        assert accounts.revoke_api_key(row.id)
        assert accounts.authenticate(key) is None
        with db.database.atomic():
            assert accounts.authenticate(key) is None
