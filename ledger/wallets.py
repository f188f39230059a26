"""Reading a wallet and its ledger entries (crediting lives with the top-ups)."""
from __future__ import annotations

from ledger.models import LedgerEntry, Wallet


def get_wallet(account_id: str) -> Wallet:
    return Wallet.get(Wallet.account == account_id)


def list_entries(account_id: str, *, limit: int,
                 starting_after: str | None) -> tuple[list[LedgerEntry], bool] | None:
    """Newest first; None when ``starting_after`` names no entry of this account."""
    wallet = get_wallet(account_id)
    query = LedgerEntry.select().where(LedgerEntry.wallet == wallet.id)
    if starting_after:
        cursor = LedgerEntry.get_or_none((LedgerEntry.id == starting_after)
                                         & (LedgerEntry.wallet == wallet.id))
        if cursor is None:
            return None
        query = query.where(LedgerEntry.seq < cursor.seq)
    rows = list(query.order_by(LedgerEntry.seq.desc()).limit(limit + 1))
    return rows[:limit], len(rows) > limit
