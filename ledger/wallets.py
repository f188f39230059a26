"""Reading a wallet and its ledger entries (crediting lives with the top-ups)."""
from __future__ import annotations

from ledger import pages
from ledger.models import Account, LedgerEntry, Wallet


def get_wallet(account_id: str) -> Wallet:
    return Wallet.get(Wallet.account == account_id)


def wallet_to_fund(account_id: str) -> tuple[Wallet, str | None]:
    """The wallet, and the account number a customer types to fund it (one read)."""
    wallet = (Wallet.select(Wallet, Account.account_number).join(Account)
              .where(Wallet.account == account_id).get())
    return wallet, wallet.account.account_number


def list_entries(account_id: str, *, limit: int,
                 starting_after: str | None) -> tuple[list[LedgerEntry], bool] | None:
    """Newest first; None when ``starting_after`` names no entry of this account."""
    mine = LedgerEntry.wallet == get_wallet(account_id).id
    return pages.newest_first(LedgerEntry.select().where(mine), LedgerEntry, limit=limit,
                              starting_after=starting_after, scope=mine)
