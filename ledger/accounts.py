"""Accounts, their wallet and their API keys (only a hash of a key is ever stored)."""
from __future__ import annotations

import hashlib
import hmac
import secrets

import peewee as pw

from ledger import prepared
from ledger.db import database, write_transaction
from ledger.ids import new_id
from ledger.models import Account, ApiKey, Wallet, utcnow

_KEY_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def hash_key(plaintext: str) -> str:
    # API keys carry 190 bits of randomness: a fast hash is enough, no salt or KDF needed.
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def _new_key_text() -> str:
    return "sk_" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(32))


def create_account(name: str) -> tuple[Account, str]:
    """A new account with its KES wallet and a first API key, returned in plain text once."""
    with write_transaction():
        account = Account.create(id=new_id("acct"), name=name)
        Wallet.create(account=account)
        _, key = _create_key(account)
    return account, key


def create_api_key(account_id: str) -> tuple[ApiKey, str]:
    with write_transaction():
        account = Account.get_by_id(account_id)
        return _create_key(account)


def _create_key(account: Account) -> tuple[ApiKey, str]:
    key = _new_key_text()
    row = ApiKey.create(id=new_id("key"), account=account, prefix=key[:11], key_hash=hash_key(key))
    return row, key


def list_api_keys(account_id: str) -> list[ApiKey]:
    return list(ApiKey.select().where(ApiKey.account == account_id).order_by(ApiKey.created_at))


def revoke_api_key(key_id: str) -> bool:
    with write_transaction():
        return ApiKey.update(revoked_at=utcnow()).where(
            (ApiKey.id == key_id) & ApiKey.revoked_at.is_null()).execute() == 1


_ACCOUNT_FIELDS = (Account.id, Account.name, Account.created_at)


def _active_key_sql(db: pw.Database, mark: str | None = None) -> str:
    """The account behind an unrevoked key hash, and the hash (every /v1 request runs it)."""
    columns = ", ".join(f'"a"."{f.column_name}"' for f in _ACCOUNT_FIELDS)
    return (f'SELECT {columns}, "k"."{ApiKey.key_hash.column_name}"'
            f' FROM "{ApiKey._meta.table_name}" AS "k"'
            f' JOIN "{Account._meta.table_name}" AS "a"'
            f' ON "a"."{Account.id.column_name}" = "k"."{ApiKey.account.column_name}"'
            f' WHERE "k"."{ApiKey.key_hash.column_name}" = {mark or db.param}'
            f' AND "k"."{ApiKey.revoked_at.column_name}" IS NULL LIMIT 1')


def _active_key_sql_named(db: pw.Database) -> str:
    return _active_key_sql(db, "%(key_hash)s")


def _active_key_row(digest: str):
    if prepared.is_sqlite(database.obj):
        return database.execute_sql(prepared.statement(_active_key_sql), (digest,)).fetchone()
    # PostgreSQL: PREPAREd once per connection (ledger.prepared), an EXECUTE per request
    return prepared.execute_prepared_outside_transaction(
        "api_key_account", _active_key_sql_named, {"key_hash": "text"},
        {"key_hash": digest}).fetchone()


def authenticate(plaintext: str) -> Account | None:
    """The account owning an active key, or None."""
    if not plaintext or not plaintext.startswith("sk_") or len(plaintext) > 100:
        return None
    digest = hash_key(plaintext)
    row = _active_key_row(digest)
    # The lookup is by a hash of the key, so timing reveals nothing about the key itself;
    # compare once more in constant time all the same.
    if row is None or not hmac.compare_digest(row[-1], digest):
        return None
    return Account(**{f.name: f.python_value(value) for f, value in zip(_ACCOUNT_FIELDS, row)})
