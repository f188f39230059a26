"""Binding the ledger to a database chosen by URL, and the life of a thread's connection.

The models point at :data:`database`, a proxy bound once per process by :func:`bind`
(Peewee's recipe for configuration at start-up). Peewee keeps one connection per thread,
which is what gunicorn threads and Dramatiq worker threads need: a psycopg2 connection is
never shared between threads.

A thread of the API or of the workers opens its connection with its first query and keeps
it from one request or message to the next. Giving it back to Peewee's pool after each made
the pool check it (``SELECT 1``) before the next: a round trip per request and per message
(``make bench``). A connection the server dropped (a restart, a failover) fails its next
statement with one of :data:`DATABASE_ERRORS`; whoever catches that calls
:func:`discard_connection`, and the thread's next query connects afresh.
"""
from __future__ import annotations

import contextlib
import os
from urllib.parse import urlsplit

import peewee
from playhouse.pool import PooledDatabase, PooledPostgresqlDatabase

database = peewee.DatabaseProxy()

# What the database raises when it is unreachable, restarting or has dropped the connection:
# worth trying the same again on a new connection.
DATABASE_ERRORS = (peewee.OperationalError, peewee.InterfaceError)

# SQLite is the embedded default: WAL so readers never block the writer, FULL sync because
# the ledger must survive a power cut, and a busy timeout so concurrent workers queue up
# instead of answering "database is locked".
SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "full",
    "busy_timeout": 30000,
    "foreign_keys": 1,
}


def open_database(url: str) -> peewee.Database:
    """A database object for ``sqlite:///path`` or ``postgresql://user@host:port/name``."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else parts.path
        if path not in ("", ":memory:"):
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
        return peewee.SqliteDatabase(path or ":memory:", pragmas=SQLITE_PRAGMAS,
                                     timeout=30, check_same_thread=False)
    if parts.scheme in ("postgres", "postgresql"):
        # Peewee's pool as shipped: threads keep their connections (see above), and one
        # discarded after an error, or a short-lived command's, is replaced from the pool,
        # which checks it (SELECT 1) as it hands it out.
        return PooledPostgresqlDatabase(
            parts.path.lstrip("/"),
            user=parts.username, password=parts.password,
            host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
            max_connections=64, stale_timeout=300, timeout=30,
            connect_timeout=10,
            # a statement that hangs (a lost lock, a dead peer) must not hold a worker forever
            options="-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000",
        )
    raise ValueError(f"unsupported database URL scheme {parts.scheme!r}")


def bind(url: str) -> peewee.Database:
    db = open_database(url)
    database.initialize(db)
    return db


def is_sqlite() -> bool:
    return isinstance(database.obj, peewee.SqliteDatabase)


def write_transaction():
    """A transaction that writes.

    On SQLite it starts with ``BEGIN IMMEDIATE``: a deferred transaction that reads and then
    writes can fail at once with "database is locked" instead of waiting its turn.
    """
    if is_sqlite():
        return database.atomic("IMMEDIATE")
    return database.atomic()


def discard_connection() -> None:
    """Close this thread's connection after a database error, before trying again.

    A connection that died with the server (restart, failover) stays this thread's until it
    is closed, and every query on it fails at once. Closed for good here (not given back to
    the pool, :meth:`~playhouse.pool.PooledDatabase.manual_close`), it is never handed out
    again, and the next query connects afresh.
    """
    if database.obj is None or database.is_closed():
        return
    try:
        if isinstance(database.obj, PooledDatabase):
            database.obj.manual_close()
        else:
            database.close()
    except Exception:  # noqa: BLE001 - already broken: there is nothing left to close
        pass


@contextlib.contextmanager
def connection():
    """Open (or reuse) this thread's connection for a unit of work, then give it back."""
    opened = database.connect(reuse_if_open=True)
    try:
        yield
    finally:
        if opened and not database.is_closed():
            database.close()
