"""The callback inbox: every Daraja callback stored exactly as received, before it is answered.

Kept apart from ``ledger.settlement`` because it is the callback endpoint's whole durable work:
nothing here settles anything.

The row is one INSERT. Outside a caller's transaction Peewee runs it in autocommit, so it is
committed (fsynced on PostgreSQL, and on SQLite with ``synchronous=FULL``) when
:func:`store_callback` returns, before the endpoint answers.
"""
from __future__ import annotations

from dataclasses import dataclass

import peewee as pw

from ledger import prebuilt
from ledger.callbacks import MalformedCallback, StkCallback, parse
from ledger.db import DATABASE_ERRORS, discard_connection, is_sqlite
from ledger.models import Callback, TopUp, utcnow
from ledger.prebuilt import param


# the acknowledgement's one statement (ledger.prebuilt: Peewee builds its SQL once)
STORE = prebuilt.Insert(Callback, Callback.received_at, Callback.remote_addr, Callback.body,
                        Callback.checkout_request_id, Callback.result_code,
                        Callback.well_formed, Callback.applied_at, Callback.outcome)


@dataclass(frozen=True)
class StoredCallback:
    """What the acknowledgement needs of the stored row: its sequence number."""
    seq: int


def store_callback(body: bytes,
                   remote_addr: str | None) -> tuple[StoredCallback, StkCallback | None]:
    """Store a callback exactly as received, committed before this returns (on this thread's
    connection, which it keeps: ``ledger.db``)."""
    try:
        parsed = parse(body)
    except MalformedCallback:
        parsed = None
    now = utcnow()
    row = {"received_at": now, "remote_addr": remote_addr,
           "body": body.decode("utf-8", errors="replace"), "well_formed": parsed is not None}
    if parsed is not None:
        row.update(checkout_request_id=parsed.checkout_request_id,
                   result_code=parsed.result_code[:32], applied_at=None, outcome=None)
    else:
        row.update(checkout_request_id=None, result_code=None, applied_at=now,
                   outcome="malformed")
    row = storable(row)
    values = [row[field.name] for field in STORE.fields]
    try:
        seq = STORE.execute(*values)
    except DATABASE_ERRORS:
        # Daraja may never send this callback again: if the thread's kept connection died
        # with a database restart since its last use, store it once more on a new one
        # (a second failure is the caller's 503). Stored twice at worst, which applying
        # callbacks takes in its stride.
        discard_connection()
        seq = STORE.execute(*values)
    return StoredCallback(seq), parsed


def storable(row: dict) -> dict:
    """A row of text as received, made storable: PostgreSQL's text cannot hold NUL (the
    INSERT would fail, a 500, and Daraja's retries would fail the same way), so NULs are
    replaced as undecodable bytes are. SQLite keeps them."""
    if is_sqlite():
        return row
    return {column: value.replace("\x00", "\ufffd") if isinstance(value, str) else value
            for column, value in row.items()}


@dataclass(frozen=True)
class StoredBody:
    """What applying a stored callback reads of it (its body never changes), with the id of
    the top-up its CheckoutRequestID names: one round trip for both."""
    seq: int
    body: str
    checkout_request_id: str | None
    applied_at: object  # a datetime, or None while it is not applied
    received_at: object
    outcome: str | None = None
    topup_id: str | None = None
    pushed_at: object = None  # the top-up's push, when it has one


READ = prebuilt.Statement(
    Callback.select(Callback.seq, Callback.body, Callback.checkout_request_id,
                    Callback.applied_at, Callback.received_at, Callback.outcome,
                    TopUp.id.alias("topup_id"), TopUp.pushed_at)
    .join(TopUp, pw.JOIN.LEFT_OUTER,
          on=(TopUp.checkout_request_id == Callback.checkout_request_id))
    .where(Callback.seq == param(Callback.seq)).limit(1))


def read_callback(seq: int) -> StoredBody | None:
    """The stored callback, how it was applied, and the top-up its CheckoutRequestID names."""
    row = READ.first(seq=seq)
    return None if row is None else StoredBody(*row)
