"""The callback inbox: every Daraja callback stored exactly as received, before it is answered.

Kept apart from ``ledger.settlement`` because it is the callback endpoint's whole durable work and
its hot path (make bench, "Callback acknowledgement"): nothing here settles anything.

The row is written by one plain INSERT, outside any explicit transaction: Peewee runs its
connections in autocommit mode, so the statement is its own transaction and is committed
(fsynced on both PostgreSQL and SQLite with ``synchronous=FULL``) when the call returns.
``BEGIN`` and ``COMMIT`` around a single statement cost PostgreSQL two more round trips, and
building the INSERT through the model cost more CPU than the rest of the request's own code.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import peewee as pw

from ledger import prepared
from ledger.callbacks import MalformedCallback, StkCallback, parse
from ledger.db import connection, database
from ledger.models import Callback, TopUp, utcnow

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
    """Store a callback exactly as received, committed before this returns (on this thread's
    connection, or one opened for the time it takes)."""
    try:
        parsed = parse(body)
    except MalformedCallback:
        parsed = None
    text = body.decode("utf-8", errors="replace")
    checkout_request_id = None if parsed is None else parsed.checkout_request_id
    if not prepared.is_sqlite(database.obj):
        # PostgreSQL's text cannot hold NUL: refused, it would fail the INSERT (a 500, and
        # in a group commit the other callbacks' first attempt). Replaced as undecodable
        # bytes are.
        text = text.replace("\x00", "\ufffd")
        if checkout_request_id is not None:
            checkout_request_id = checkout_request_id.replace("\x00", "\ufffd")
    now = _DATETIME.db_value(utcnow())
    if parsed is not None:
        values = (now, remote_addr, text, checkout_request_id,
                  parsed.result_code[:32], True, None, None)
    else:
        values = (now, remote_addr, text, None, None, False, now, "malformed")
    if prepared.is_sqlite(database.obj):
        with connection():
            seq = database.execute_sql(prepared.statement(_insert_sql), values).lastrowid
        return StoredCallback(seq), parsed
    if database.in_transaction():  # the caller's transaction decides when it commits
        seq = database.execute_sql(prepared.statement(_insert_sql), values).fetchone()[0]
        return StoredCallback(seq), parsed
    return StoredCallback(group_commit.store(values)), parsed


class GroupCommit:
    """The INSERTs of callbacks arriving together in one process, one statement and one
    commit for all of them (PostgreSQL).

    The first thread to arrive writes: its row and every row that joined while the previous
    statement ran, by one multi-row INSERT on its own connection; the others wait on a
    condition until their row is committed, then return its seq. Nobody waits for a batch to
    fill: under no load every batch is a single row, as before; under load the rows that
    gathered during one round trip share the next. Each caller returns only once its own row
    is committed (the statement is its own transaction, in autocommit), and gets its own
    error if it was not: when a batch fails, each of its rows is written again on its own,
    so a row the database refuses cannot take the others down with it, and a database that
    is down answers every one of them with the error it gave.

    Each caller's seq: the rows are inserted in the order of the VALUES list and each takes
    the sequence's next value as it is inserted, so the seqs RETURNed, in ascending order,
    are the rows' in the list's order (not the order of the RETURNING rows themselves,
    which SQL leaves open).
    """

    def __init__(self, max_rows: int = 64):
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._written = threading.Condition(self._lock)
        self._pending: list[_Row] = []
        self._writing = False

    def store(self, values: tuple) -> int:
        row = _Row(values)
        with self._lock:
            self._pending.append(row)
            while not row.done:
                if self._writing:
                    self._written.wait()
                    continue
                batch = self._pending[:self.max_rows]
                del self._pending[:self.max_rows]
                self._writing = True
                self._lock.release()
                try:
                    _write(batch)
                except Exception as exc:  # no connection: every caller's own error
                    for written in batch:
                        if written.seq is None and written.error is None:
                            written.error = exc
                finally:
                    self._lock.acquire()
                    self._writing = False
                    for written in batch:
                        if written.seq is None and written.error is None:  # _write died
                            written.error = RuntimeError("the callback was not stored")
                        written.done = True
                    self._written.notify_all()
        if row.error is not None:
            raise row.error
        return row.seq


class _Row:
    __slots__ = ("values", "done", "seq", "error")

    def __init__(self, values: tuple):
        self.values, self.done, self.seq, self.error = values, False, None, None


def _write(batch: list[_Row]) -> None:
    """Insert ``batch``: one statement, else one per row. On a connection of this thread's
    own, opened here if the caller has none: the callers who wait need none."""
    with connection():
        try:
            if len(batch) > 1:
                for row, seq in zip(batch, _insert_prepared([row.values for row in batch])):
                    row.seq = seq
                return
        except Exception:  # noqa: BLE001 - each row again on its own, for its own outcome
            pass
        for row in batch:
            try:
                row.seq, = _insert_prepared([row.values])
            except Exception as exc:  # noqa: BLE001 - the caller's own error, raised there
                row.error = exc


# The columns' types for PREPARE (varchar columns take text and still check their length).
_PG_TYPES = ("timestamp", "text", "text", "text", "text", "boolean", "timestamp", "text")
_pg_types: dict[int, dict[str, str]] = {}


def _named_insert_sql(rows: int):
    def build(db: pw.Database) -> str:
        names = ", ".join(f'"{c.column_name}"' for c in _COLUMNS)
        values = ", ".join(
            "(" + ", ".join(f"%(v{r * len(_COLUMNS) + c})s" for c in range(len(_COLUMNS))) + ")"
            for r in range(rows))
        return (f'INSERT INTO "{Callback._meta.table_name}" ({names}) VALUES {values}'
                ' RETURNING "seq"')
    return build


def _insert_prepared(rows: list[tuple]) -> list[int]:
    """The rows' seqs, in the rows' order, by a server-side prepared INSERT of that many
    rows (PostgreSQL parses and plans it once per connection, not once per callback)."""
    n = len(rows)
    types = _pg_types.get(n)
    if types is None:
        types = _pg_types[n] = {f"v{i}": _PG_TYPES[i % len(_COLUMNS)]
                                for i in range(n * len(_COLUMNS))}
    params = {f"v{i}": v for i, v in enumerate(v for row in rows for v in row)}
    cursor = prepared.execute_server_prepared(f"callback_insert_{n}", _named_insert_sql(n),
                                              types, params)
    return sorted(seq for seq, in cursor.fetchall())


group_commit = GroupCommit()


@dataclass(frozen=True)
class StoredBody:
    """What applying a stored callback reads of it (its body never changes), with the id of
    the top-up its CheckoutRequestID names: one round trip for both."""
    seq: int
    body: str
    checkout_request_id: str | None
    applied_at: object  # a datetime, or None while it is not applied
    received_at: object
    topup_id: str | None = None


def read_callback(seq: int) -> StoredBody | None:
    """The stored callback and the id of the top-up its CheckoutRequestID names."""
    row = (Callback.select(Callback.seq, Callback.body, Callback.checkout_request_id,
                           Callback.applied_at, Callback.received_at,
                           TopUp.id.alias("topup_id"))
           .join(TopUp, pw.JOIN.LEFT_OUTER,
                 on=(TopUp.checkout_request_id == Callback.checkout_request_id))
           .where(Callback.seq == seq).dicts().first())
    return None if row is None else StoredBody(**row)
