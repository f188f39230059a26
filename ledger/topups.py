"""Top-ups: recording a client's request, its history, and reading them back.

What happens to a top-up after its request lives beside this module: its STK push
(``ledger.pushes``), its settlement by a callback, a query or giving up
(``ledger.settlement``), and payments no top-up knows (``ledger.orphans``).
"""
from __future__ import annotations

import hashlib
import json

import peewee as pw

from ledger import pages, prebuilt
from ledger.db import write_transaction
from ledger.ids import new_id, short_reference
from ledger.models import PENDING, PUSH_QUEUED, STK_PUSH, UNKNOWN, TopUp, TopUpEvent, utcnow
from ledger.phones import mask

# a top-up Daraja's word can still settle
SETTLEABLE = (PENDING, UNKNOWN)


class IdempotencyConflict(Exception):
    """The idempotency key was used before with another request body."""


def fingerprint(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# written several times for every top-up (ledger.prebuilt: Peewee builds its SQL once)
HISTORY_LINE = prebuilt.Insert(TopUpEvent, TopUpEvent.topup, TopUpEvent.kind, TopUpEvent.detail,
                               TopUpEvent.created_at)


def record_event(topup_id, kind: str, **detail) -> None:
    """A line of the top-up's history. Call inside the transaction that made it true."""
    HISTORY_LINE.execute(topup_id, kind, json.dumps(detail, default=str), utcnow())


# every request's row (ledger.prebuilt: Peewee builds its SQL once); the other columns are
# empty until the push
NEW_TOPUP = prebuilt.Insert(
    TopUp, TopUp.id, TopUp.account, TopUp.provider, TopUp.status, TopUp.amount, TopUp.phone,
    TopUp.reference, TopUp.metadata, TopUp.idempotency_key, TopUp.request_fingerprint,
    TopUp.push_state, TopUp.push_attempts, TopUp.query_attempts, TopUp.created_at,
    TopUp.updated_at, TopUp.channel)


# --- the request ---------------------------------------------------------------------------

def create_topup(account_id: str, *, amount: int, phone: str, reference: str | None,
                 metadata: dict, idempotency_key: str | None = None,
                 request_fingerprint: str | None = None) -> tuple[TopUp, bool]:
    """Record a top-up request; ``(topup, created)``.

    With an idempotency key, the same key and body give back the first top-up
    (``created`` False); the same key with another body raises IdempotencyConflict.
    """
    topup_id = new_id("tu")
    now = utcnow()
    row = dict(id=topup_id, account=account_id, provider="mpesa", status=PENDING,
               amount=amount, phone=phone, reference=reference or short_reference(topup_id),
               metadata=json.dumps(metadata, sort_keys=True), idempotency_key=idempotency_key,
               request_fingerprint=request_fingerprint, push_state=PUSH_QUEUED,
               push_attempts=0, query_attempts=0, created_at=now, updated_at=now,
               channel=STK_PUSH)
    topup = TopUp(**row)   # the top-up as the INSERT writes it, for the answer
    try:
        # the unique index on (account, idempotency key) decides a race of two requests
        with write_transaction():
            NEW_TOPUP.execute(*(row[field.name] for field in NEW_TOPUP.fields))
            record_event(topup_id, "requested", amount=amount, phone=mask(phone),
                         reference=topup.reference)
        return topup, True
    except pw.IntegrityError:
        if idempotency_key is None:
            raise
    existing = TopUp.get_or_none((TopUp.account == account_id)
                                 & (TopUp.idempotency_key == idempotency_key))
    if existing is None:  # the row that collided was rolled back meanwhile: try once more
        return create_topup(account_id, amount=amount, phone=phone, reference=reference,
                            metadata=metadata, idempotency_key=idempotency_key,
                            request_fingerprint=request_fingerprint)
    if existing.request_fingerprint != request_fingerprint:
        raise IdempotencyConflict(existing.id)
    return existing, False


# --- reading ---------------------------------------------------------------------------------

def get_topup(account_id: str, topup_id: str) -> TopUp | None:
    return TopUp.get_or_none((TopUp.id == topup_id) & (TopUp.account == account_id))


def list_topups(account_id: str, *, status: str | None, limit: int,
                starting_after: str | None) -> tuple[list[TopUp], bool] | None:
    """Newest first; None when ``starting_after`` names no top-up of this account."""
    mine = TopUp.account == account_id
    query = TopUp.select().where(mine)
    if status:
        query = query.where(TopUp.status == status)
    return pages.newest_first(query, TopUp, limit=limit, starting_after=starting_after,
                              scope=mine)
