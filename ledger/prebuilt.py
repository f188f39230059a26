"""INSERTs whose SQL Peewee writes once: the rows written on every callback and every credit.

Why this module exists: Peewee builds a query's SQL anew each time it runs it, field by
field, and for the INSERTs on the hot paths that building cost more CPU than the rest of the
work (the callback's acknowledgement: more than the Flask request around it). An INSERT's SQL
depends only on its table, its columns and the database, so :class:`Insert` has Peewee build
it the first time on each database (``Model.insert_many(…, fields=…)`` and ``Query.sql()``),
then runs that SQL with each row's values through ``Database.execute_sql``, all public
Peewee. Values go through each field's ``db_value``, as Peewee's own INSERT sends them, and
errors are Peewee's (``IntegrityError`` from a unique index, and so on). ``make bench``
shows the floors with and without it (bench/CHANGES.md).

Only plain INSERTs of the columns named, nothing else: a field with a default must be named
(its value given), so that Peewee adds no column of its own to the statement.
"""
from __future__ import annotations

import peewee

from ledger.db import database


class Insert:
    """``Insert(Model, Model.a, Model.b).execute(a, b)``: the new row's primary key."""

    def __init__(self, model: type[peewee.Model], *fields: peewee.Field):
        self.model = model
        self.fields = fields
        # the SQL for each kind of database bound (its dialect is all that changes it)
        self._sql: dict[type, str] = {}

    def sql(self) -> str:
        """The statement for the database bound now, built by Peewee the first time."""
        kind = type(database.obj)
        sql = self._sql.get(kind)
        if sql is None:
            query = self.model.insert_many([(None,) * len(self.fields)], fields=self.fields)
            sql, params = query.sql()
            if len(params) != len(self.fields):
                raise ValueError(f"{self.model.__name__}: name every field with a default; "
                                 f"Peewee added columns to {sql}")
            self._sql[kind] = sql
        return sql

    def execute(self, *values):
        if len(values) != len(self.fields):
            raise TypeError(f"{len(self.fields)} values expected, {len(values)} given")
        sql = self.sql()
        cursor = database.execute_sql(sql, [field.db_value(value)
                                            for field, value in zip(self.fields, values)])
        if " RETURNING " in sql:      # PostgreSQL hands back the primary key
            return cursor.fetchone()[0]
        return cursor.lastrowid       # SQLite
