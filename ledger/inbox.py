"""The callback inbox: every Daraja callback stored exactly as received, before it is answered.

Kept apart from ``ledger.topups`` because it is the callback endpoint's whole durable work and
its hot path (make bench, "Callback acknowledgement"): nothing here settles anything.
"""
from __future__ import annotations

from ledger.callbacks import MalformedCallback, StkCallback, parse
from ledger.db import write_transaction
from ledger.models import Callback, utcnow


def store_callback(body: bytes, remote_addr: str | None) -> tuple[Callback, StkCallback | None]:
    """Store a callback exactly as received, before it is acknowledged."""
    try:
        parsed = parse(body)
    except MalformedCallback:
        parsed = None
    text = body.decode("utf-8", errors="replace")
    with write_transaction():
        row = Callback.create(
            body=text, remote_addr=remote_addr, well_formed=parsed is not None,
            checkout_request_id=parsed.checkout_request_id if parsed else None,
            result_code=parsed.result_code[:32] if parsed else None,
            applied_at=None if parsed else utcnow(),
            outcome=None if parsed else "malformed")
    return row, parsed
