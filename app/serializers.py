"""The API's objects, exactly as the contract shows them."""
from __future__ import annotations

import datetime as dt
import json


def timestamp(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.replace(microsecond=0).isoformat() + "Z"


def topup(row) -> dict:
    return {
        "id": row.id, "object": "topup", "provider": row.provider, "status": row.status,
        "amount": row.amount, "currency": "KES", "phone": row.phone,
        "reference": row.reference, "metadata": json.loads(row.metadata or "{}"),
        "checkout_request_id": row.checkout_request_id, "mpesa_receipt": row.mpesa_receipt,
        "failure_code": row.failure_code, "failure_reason": row.failure_reason,
        "created_at": timestamp(row.created_at), "updated_at": timestamp(row.updated_at),
        "completed_at": timestamp(row.completed_at),
    }


def wallet(row) -> dict:
    cents = row.balance_cents
    return {"object": "wallet", "currency": row.currency,
            "balance": f"{cents // 100}.{cents % 100:02d}", "balance_cents": cents,
            "updated_at": timestamp(row.updated_at)}


def ledger_entry(row) -> dict:
    return {"id": row.id, "object": "ledger_entry", "type": row.type,
            "amount_cents": row.amount_cents, "balance_after_cents": row.balance_after_cents,
            "topup": row.topup_id, "mpesa_receipt": row.mpesa_receipt,
            "description": row.description, "created_at": timestamp(row.created_at)}


def page(rows, has_more: bool, serialize) -> dict:
    return {"object": "list", "data": [serialize(r) for r in rows], "has_more": has_more}
