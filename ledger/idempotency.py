"""Idempotent requests: the first answer to a key is the answer to every retry of it.

A request sent with an ``Idempotency-Key`` inserts its record *first*, inside the same
transaction as the work, and stores the answer there before committing. The unique index
on (account, endpoint, key) then does what Python cannot: of two requests with one key at
the same moment, the second blocks on the index until the first commits, fails with
IntegrityError, rolls back everything it did, and answers the first one's stored answer.
A committed record always holds a complete answer; there is no "in progress" state to
time out.

Answers that come from the work itself are stored, errors included (a ``402`` stays a
``402`` for that key, as Stripe does); requests refused before the work starts (malformed,
unauthorised, rate limited) store nothing, so a corrected retry may reuse the key.

Records are kept :data:`RETENTION` (the contract promises at least 24 hours), then purged.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Callable

import peewee as pw

from ledger.db import write_transaction
from ledger.models import IdempotencyRecord, utcnow

RETENTION = dt.timedelta(hours=48)


class IdempotencyConflict(Exception):
    """The key was used before, on this endpoint, with another request body."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict
    replayed: bool = False


def fingerprint(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def find(account_id: str, endpoint: str, key: str) -> IdempotencyRecord | None:
    return IdempotencyRecord.get_or_none((IdempotencyRecord.account == account_id)
                                         & (IdempotencyRecord.endpoint == endpoint)
                                         & (IdempotencyRecord.key == key))


def replay(record: IdempotencyRecord, request_fingerprint: str) -> Answer:
    if record.request_fingerprint != request_fingerprint:
        raise IdempotencyConflict(record.key)
    return Answer(record.status_code, json.loads(record.response_body), replayed=True)


def previous_answer(account_id: str, endpoint: str, key: str | None,
                    request_fingerprint: str) -> Answer | None:
    """The stored answer for this key, None if there is none; IdempotencyConflict if the key
    was used with another body. A cheap read that lets a retry skip slow checks."""
    if key is None:
        return None
    record = find(account_id, endpoint, key)
    return replay(record, request_fingerprint) if record is not None else None


def run_once(account_id: str, endpoint: str, key: str | None, request_fingerprint: str,
             work: Callable[[], tuple[int, dict]]) -> Answer:
    """Run ``work`` (which returns the answer's status and body) in one write transaction,
    at most once per key. Without a key it simply runs."""
    if key is None:
        with write_transaction():
            status, body = work()
        return Answer(status, body)
    try:
        with write_transaction():
            record = IdempotencyRecord.create(account=account_id, endpoint=endpoint, key=key,
                                              request_fingerprint=request_fingerprint)
            status, body = work()
            (IdempotencyRecord
             .update(status_code=status, response_body=json.dumps(body, separators=(",", ":")))
             .where(IdempotencyRecord.seq == record.seq).execute())
        return Answer(status, body)
    except pw.IntegrityError:
        existing = find(account_id, endpoint, key)
        if existing is None:  # the collision was not on the key: not ours to explain
            raise
        return replay(existing, request_fingerprint)


def purge(now: dt.datetime | None = None, *, batch: int = 1000) -> int:
    """Forget answers older than the retention; returns how many were deleted."""
    cutoff = (now or utcnow()) - RETENTION
    old = (IdempotencyRecord.select(IdempotencyRecord.seq)
           .where(IdempotencyRecord.created_at < cutoff).limit(batch))
    with write_transaction():
        return IdempotencyRecord.delete().where(IdempotencyRecord.seq.in_(old)).execute()
