"""The API key lookup every /v1 request runs (``ledger/accounts.py``) on PostgreSQL finds the
key's account, inside a transaction too, and refuses a key the moment it is revoked."""
from __future__ import annotations

from ledger import accounts, db


def test_on_postgresql_the_key_lookup_finds_the_account_and_nothing_else(ledger_pg):
    with db.connection():
        _, key = accounts.create_api_key(ledger_pg)
        found = accounts.authenticate(key)
        assert found is not None and found.id == ledger_pg
        assert accounts.authenticate(key[:-1] + ("x" if key[-1] != "x" else "y")) is None


def test_a_revoked_key_is_refused_at_once_and_inside_a_transaction_too(ledger_pg):
    with db.connection():
        row, key = accounts.create_api_key(ledger_pg)
        assert accounts.authenticate(key).id == ledger_pg
        with db.database.atomic():
            assert accounts.authenticate(key).id == ledger_pg
        assert accounts.revoke_api_key(row.id)
        assert accounts.authenticate(key) is None
        with db.database.atomic():
            assert accounts.authenticate(key) is None
