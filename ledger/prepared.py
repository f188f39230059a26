"""Hand-written SQL for the API's hot paths, built once per process for the bound database.

Peewee builds each query's SQL afresh from its expression tree, which costs more CPU than the
rest of a short request (make bench, "CPU per unit of work"). The few statements every request
runs are written out once here instead, with the bound database's parameter mark, and run
through the same connection and error translation as every Peewee query.
"""
from __future__ import annotations

import contextlib
import re
import weakref
from typing import Callable

import peewee as pw

from ledger.db import database, write_transaction

_built: dict[tuple[Callable, type], str] = {}


def statement(build: Callable[[pw.Database], str]) -> str:
    """``build(database)``'s SQL for the database bound now, built on first use."""
    db = database.obj
    key = (build, type(db))
    sql = _built.get(key)
    if sql is None:
        sql = _built[key] = build(db)
    return sql


def is_sqlite(db: pw.Database) -> bool:
    return isinstance(db, pw.SqliteDatabase)


def one_statement_transaction():
    """What one PostgreSQL statement that does several writes (writable CTEs) needs around it
    to stay all or nothing as the transaction it replaced was: nothing outside a transaction,
    where the statement is its own; a savepoint inside one, so that a failure rolls back only
    this work and leaves the caller's transaction usable, as before."""
    return write_transaction() if database.in_transaction() else contextlib.nullcontext()


# --- server-side prepared statements (PostgreSQL) ---------------------------------------------

# Statements this process has PREPAREd, by connection: a connection the pool drops is
# forgotten with it, and a new one prepares again on first use.
_server_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_server_sql: dict[str, tuple[str, str]] = {}
_UNKNOWN_STATEMENT = "26000"  # invalid_sql_statement_name


def _numbered(name: str, sql: str, types: dict[str, str]) -> tuple[str, str]:
    """``PREPARE name (types) AS sql`` with $1… for ``%(key)s`` marks, and the matching
    ``EXECUTE name (%(key)s, …)``."""
    order: list[str] = []

    def mark(match: re.Match) -> str:
        key = match.group(1)
        if key not in order:
            order.append(key)
        return f"${order.index(key) + 1}"

    body = re.sub(r"%\((\w+)\)s", mark, sql)
    prepare = f"PREPARE {name} ({', '.join(types[key] for key in order)}) AS {body}"
    execute = f"EXECUTE {name} ({', '.join(f'%({key})s' for key in order)})"
    return prepare, execute


def execute_server_prepared(name: str, build: Callable[[pw.Database], str],
                            types: dict[str, str], params: dict):
    """Run ``build(database)``'s statement (``%(key)s`` marks, ``types`` naming each key's
    SQL type) as a server-side prepared statement on this thread's PostgreSQL connection.

    PostgreSQL parses and plans every statement sent as text: for the one-statement credit
    that took 0.4 ms of the server's CPU, more than running it. PREPAREd once per
    connection, each call is an EXECUTE of the statement planned before. Only outside a
    transaction: a PREPARE that failed inside one would abort the caller's transaction.
    """
    texts = _server_sql.get(name)
    if texts is None:
        texts = _server_sql[name] = _numbered(name, build(database.obj), types)
    prepare, execute = texts
    conn = database.connection()
    names = _server_prepared.get(conn)
    if names is None:
        names = _server_prepared[conn] = set()
    if name not in names:
        database.execute_sql(prepare)
        names.add(name)
    try:
        return database.execute_sql(execute, params)
    except (pw.OperationalError, pw.ProgrammingError) as exc:
        # The server forgot it (DEALLOCATE, a pooler that reset the session): once more.
        if getattr(getattr(exc, "orig", None), "pgcode", None) != _UNKNOWN_STATEMENT:
            raise
        names.discard(name)
    database.execute_sql(prepare)
    names.add(name)
    return database.execute_sql(execute, params)


def execute_prepared_outside_transaction(name: str, build: Callable[[pw.Database], str],
                                         types: dict[str, str], params: dict):
    """PostgreSQL: ``build(database)``'s statement (``%(key)s`` marks) server-side prepared
    when no transaction is open, as its own transaction; inside a caller's transaction sent
    as text, as before (a PREPARE that failed there would abort the caller's transaction).
    A statement of several writes needs ``one_statement_transaction()`` around it."""
    if database.in_transaction():
        return database.execute_sql(statement(build), params)
    return execute_server_prepared(name, build, types, params)
