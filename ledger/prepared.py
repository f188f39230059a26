"""Hand-written SQL for the API's hot paths, built once per process for the bound database.

Peewee builds each query's SQL afresh from its expression tree, which costs more CPU than the
rest of a short request (make bench, "CPU per unit of work"). The few statements every request
runs are written out once here instead, with the bound database's parameter mark, and run
through the same connection and error translation as every Peewee query.
"""
from __future__ import annotations

from typing import Callable

import peewee as pw

from ledger.db import database

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
