"""Accounts, their wallet, their account number and their API keys (only a hash of a key is
ever stored)."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import peewee as pw

from ledger import account_numbers, prebuilt
from ledger.db import write_transaction
from ledger.ids import new_id
from ledger.models import Account, ApiKey, Wallet, utcnow
from ledger.prebuilt import param

_KEY_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def hash_key(plaintext: str) -> str:
    # API keys carry 190 bits of randomness: a fast hash is enough, no salt or KDF needed.
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def _new_key_text() -> str:
    return "sk_" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(32))


def create_account(name: str) -> tuple[Account, str]:
    """A new account with its KES wallet, its account number and a first API key, returned in
    plain text once."""
    for attempt in range(5):
        try:
            # the unique index on the account number decides a collision: drawn again
            with write_transaction():
                account = Account.create(id=new_id("acct"), name=name,
                                         account_number=account_numbers.generate())
                Wallet.create(account=account)
                _, key = _create_key(account)
            return account, key
        except pw.IntegrityError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def find_by_account_number(typed: str | None) -> Account | None:
    """The account a customer meant by what they typed after the paybill (case, spaces,
    dashes and look-alike characters forgiven: :func:`ledger.account_numbers.normalize`)."""
    number = account_numbers.normalize(typed)
    if number is None:
        return None
    return Account.get_or_none(Account.account_number == number)


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


@dataclass(frozen=True)
class Authenticated:
    """Who a request's API key speaks for: the account (its id is all a request needs)."""
    id: str


# ledger.prebuilt: Peewee writes it once, for a read every /v1 request makes
ACTIVE_KEY = prebuilt.Statement(
    ApiKey.select(ApiKey.key_hash, ApiKey.account)
    .where((ApiKey.key_hash == param(ApiKey.key_hash)) & ApiKey.revoked_at.is_null())
    .limit(1))


def authenticate(plaintext: str) -> Authenticated | None:
    """The account owning an active key, or None. Every /v1 request asks: one narrow read
    (the key's account is a foreign key, so it exists)."""
    if not plaintext or not plaintext.startswith("sk_") or len(plaintext) > 100:
        return None
    digest = hash_key(plaintext)
    key = ACTIVE_KEY.first(key_hash=digest)
    # The lookup is by a hash of the key, so timing reveals nothing about the key itself;
    # compare once more in constant time all the same.
    if key is None or not hmac.compare_digest(key[0], digest):
        return None
    return Authenticated(key[1])
