"""The callback inbox: every Daraja callback stored exactly as received, before it is answered.

Kept apart from ``ledger.topups`` because it is the callback endpoint's whole durable work and
its hot path (make bench, "Callback acknowledgement"): nothing here settles anything.

The row is written by one plain INSERT, outside any explicit transaction: Peewee runs its
connections in autocommit mode, so the statement is its own transaction and is committed
(fsynced on both PostgreSQL and SQLite with ``synchronous=FULL``) when the call returns.
``BEGIN`` and ``COMMIT`` around a single statement cost PostgreSQL two more round trips, and
building the INSERT through the model cost more CPU than the rest of the request's own code.
"""
from __future__ import annotations

from dataclasses import dataclass

import peewee as pw

from ledger import credit_pg, prepared
from ledger.callbacks import MalformedCallback, StkCallback, parse
from ledger.db import database
from ledger.models import Callback, utcnow

_COLUMNS = (Callback.received_at, Callback.remote_addr, Callback.body,
            Callback.checkout_request_id, Callback.result_code, Callback.well_formed,
            Callback.applied_at, Callback.outcome)
_DATETIME = Callback.received_at


@dataclass(frozen=True)
class StoredCallback:
    """What the acknowledgement needs of the stored row: its sequence number."""
    seq: int


def _insert_sql(db: pw.Database) -> str:
    names = ", ".join(f'"{c.column_name}"' for c in _COLUMNS)
    marks = ", ".join([db.param] * len(_COLUMNS))
    # SQLite gives the new seq as lastrowid; a RETURNING row left unread would keep its
    # statement, and so its write transaction, open.
    returning = "" if prepared.is_sqlite(db) else ' RETURNING "seq"'
    return (f'INSERT INTO "{Callback._meta.table_name}" ({names}) VALUES ({marks})'
            + returning)


def store_callback(body: bytes,
                   remote_addr: str | None) -> tuple[StoredCallback, StkCallback | None]:
    """Store a callback exactly as received, committed before this returns."""
    try:
        parsed = parse(body)
    except MalformedCallback:
        parsed = None
    text = body.decode("utf-8", errors="replace")
    now = _DATETIME.db_value(utcnow())
    if parsed is not None:
        values = (now, remote_addr, text, parsed.checkout_request_id,
                  parsed.result_code[:32], True, None, None)
    else:
        values = (now, remote_addr, text, None, None, False, now, "malformed")
    cursor = database.execute_sql(prepared.statement(_insert_sql), values)
    seq = cursor.lastrowid if prepared.is_sqlite(database.obj) else cursor.fetchone()[0]
    return StoredCallback(seq), parsed


@dataclass(frozen=True)
class StoredBody:
    """What applying a stored callback reads of it (its body never changes), with the id of
    the top-up its CheckoutRequestID names and, on PostgreSQL, that top-up as the one-statement
    credit needs it (``ledger.credit_pg.TOPUP_COLUMNS``): one round trip for both."""
    seq: int
    body: str
    checkout_request_id: str | None
    applied_at: object  # a datetime, or None while it is not applied
    topup_id: str | None = None
    topup: tuple | None = None


def _read_sql(db: pw.Database) -> str:
    sqlite = prepared.is_sqlite(db)
    columns = "t.id" if sqlite else credit_pg.TOPUP_COLUMNS
    return (f"SELECT c.body, c.checkout_request_id, c.applied_at, {columns}"
            f" FROM {Callback._meta.table_name} c"
            f" LEFT JOIN top_up t ON t.checkout_request_id = c.checkout_request_id"
            f" WHERE c.seq = {db.param if sqlite else '%(seq)s'}")


def read_callback(seq: int) -> StoredBody | None:
    """The stored callback and its top-up, by one prepared SELECT (every credit starts here)."""
    if prepared.is_sqlite(database.obj):
        row = database.execute_sql(prepared.statement(_read_sql), (seq,)).fetchone()
        return None if row is None else StoredBody(
            seq, row[0], row[1], _DATETIME.python_value(row[2]), topup_id=row[3])
    if database.in_transaction():
        cursor = database.execute_sql(prepared.statement(_read_sql), {"seq": seq})
    else:
        cursor = prepared.execute_server_prepared("callback_read", _read_sql,
                                                  {"seq": "bigint"}, {"seq": seq})
    row = cursor.fetchone()
    if row is None:
        return None
    return StoredBody(seq, row[0], row[1], row[2], topup_id=row[3], topup=row[3:])
