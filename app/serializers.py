"""The API's objects, exactly as the contract shows them."""
from __future__ import annotations

from ledger.events import timestamp, topup_object

# One top-up object for the API and the events: ledger.events builds it (ledger cannot import app)
topup = topup_object


def wallet(row, *, paybill: str, account_number: str | None) -> dict:
    """The wallet, with what a customer types to fund it from the phone (contract §6)."""
    cents = row.balance_cents
    return {"object": "wallet", "currency": row.currency,
            "balance": f"{cents // 100}.{cents % 100:02d}", "balance_cents": cents,
            "paybill": paybill, "account_number": account_number,
            "updated_at": timestamp(row.updated_at)}


def ledger_entry(row) -> dict:
    return {"id": row.id, "object": "ledger_entry", "type": row.type,
            "amount_cents": row.amount_cents, "balance_after_cents": row.balance_after_cents,
            "topup": row.topup_id, "mpesa_receipt": row.mpesa_receipt,
            "description": row.description, "created_at": timestamp(row.created_at)}


def page(rows, has_more: bool, serialize) -> dict:
    return {"object": "list", "data": [serialize(r) for r in rows], "has_more": has_more}
