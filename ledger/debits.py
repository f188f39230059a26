"""Spending from a wallet: in cents, never below zero, however many debits race.

The balance check and the subtraction are one statement,
``UPDATE wallet SET balance_cents = balance_cents - X WHERE account = … AND balance_cents >= X``:
PostgreSQL re-evaluates the condition on the row's latest version after waiting for its lock,
so of many concurrent debits exactly those that fit succeed, on any number of API processes.
The wallet's ``CHECK (balance_cents >= 0)`` stands behind it. The ledger entry is written in
the same transaction, so a debit is either the two of them or neither.
"""
from __future__ import annotations

from ledger.ids import new_id
from ledger.models import LedgerEntry, Wallet, utcnow

MAX_DEBIT_CENTS = 100_000_000_000  # KES 1 billion: beyond any wallet this gateway will hold


class InsufficientFunds(Exception):
    def __init__(self, balance_cents: int, amount_cents: int):
        super().__init__(f"balance {balance_cents} cents, debit {amount_cents} cents")
        self.balance_cents, self.amount_cents = balance_cents, amount_cents


def debit(account_id: str, amount_cents: int, description: str) -> LedgerEntry:
    """Take ``amount_cents`` from the account's wallet. Call inside a write transaction.

    Raises InsufficientFunds, having changed nothing, when the balance is short.
    """
    if not 0 < amount_cents <= MAX_DEBIT_CENTS:
        raise ValueError("amount_cents out of range")
    changed = (Wallet.update(balance_cents=Wallet.balance_cents - amount_cents,
                             updated_at=utcnow())
               .where((Wallet.account == account_id) & (Wallet.balance_cents >= amount_cents))
               .execute())
    # After a successful UPDATE our row lock keeps the balance as we left it until commit.
    wallet = Wallet.get(Wallet.account == account_id)
    if changed != 1:
        raise InsufficientFunds(wallet.balance_cents, amount_cents)
    return LedgerEntry.create(
        id=new_id("le"), wallet=wallet, type="debit", amount_cents=-amount_cents,
        balance_after_cents=wallet.balance_cents, topup=None, mpesa_receipt=None,
        description=description, source="api")
