"""The two databases the ledger runs on, for its tests (the fixtures are in tests/conftest.py).

A module of ledger tests says so with ``pytestmark = pytest.mark.both_databases``: each of its
tests that uses the ledger then runs once on SQLite and once on PostgreSQL.
"""
from __future__ import annotations

import contextlib
from urllib.parse import urlsplit

import peewee
import psycopg2
from psycopg2 import sql

from ledger import db

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

# the table peewee-migrate records the applied migrations in: the schema, not the data
MIGRATIONS_TABLE = "migratehistory"


def empty(url: str) -> None:
    """Delete every row of the PostgreSQL database at ``url`` but the migrations', and restart
    its sequences: as a new database would be, with the schema already there.

    Foreign keys are not checked while it deletes (``session_replication_role``), so the
    tables may go in any order. A transaction a test left open holds its rows: the delete
    then fails after ``lock_timeout`` and says so, rather than hang.
    """
    with contextlib.closing(psycopg2.connect(url)) as connection:
        with connection, connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '10s'")
            cursor.execute("SET LOCAL session_replication_role = replica")
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                           "AND tablename <> %s", (MIGRATIONS_TABLE,))
            for (table,) in cursor.fetchall():
                cursor.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
            cursor.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public' "
                           "AND sequencename NOT LIKE %s", (MIGRATIONS_TABLE + "%",))
            for (sequence,) in cursor.fetchall():
                cursor.execute(sql.SQL("ALTER SEQUENCE {} RESTART").format(
                    sql.Identifier(sequence)))


@contextlib.contextmanager
def another_connection(url: str):
    """The ledger at ``url`` seen through a connection of its own, as another process sees it:
    a Peewee database, connected."""
    other = db.open_database(url)
    other.connect()
    try:
        yield other
    finally:
        close(other)


def unreachable(url: str, tmp_path) -> str:
    """A URL of the same kind as ``url`` where no database answers: a port nothing listens on
    (PostgreSQL), a directory (SQLite)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return f"sqlite:///{tmp_path}"
    return f"{parts.scheme}://{parts.username}@127.0.0.1:9{parts.path}"


def close(database: peewee.Database) -> None:
    """Close every connection of ``database`` this process opened, on every thread (a pool's
    too: workers' threads keep theirs), so the next test starts from none."""
    if hasattr(database, "close_all"):
        database.close_all()
    elif not database.is_closed():
        database.close()
