"""Statements whose SQL Peewee writes once: the ones run on every callback, push and credit.

Why this module exists: Peewee builds a query's SQL anew each time it runs it, node by node,
and on the hot paths that building cost more CPU than the rest of the work: in a worker,
about a third of a top-up's CPU went to writing the same dozen statements again (py-spy,
``make bench``), and for the callback's acknowledgement the INSERT's building cost more than
the Flask request around it. A statement's SQL depends only on its shape and the database's
dialect, so it is written here by Peewee, from a query built with Peewee's query builder,
the first time it runs on each kind of database (``Query.sql()``), then run with each call's
values through ``Database.execute_sql``; all public Peewee. ``make bench`` shows the floors
with and without it (bench/CHANGES.md).

- :class:`Insert`: a plain INSERT of the columns named, nothing else (a field with a default
  must be named, with its value given, so that Peewee adds no column of its own).
- :class:`Statement`: any query, with :func:`param` where a call's value goes. Values go
  through their field's ``db_value`` and the columns a SELECT reads come back through their
  field's ``python_value``, as Peewee's own query sends and reads them; errors are Peewee's
  (``IntegrityError`` from a unique index, and so on).
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


class _Slot:
    """Where a call's value goes in a :class:`Statement`, and the field that converts it."""
    __slots__ = ("name", "field")

    def __init__(self, name: str, field: peewee.Field):
        self.name, self.field = name, field

    def __repr__(self):
        return f"param({self.name})"


def param(field: peewee.Field, name: str | None = None) -> peewee.Value:
    """A value given when the statement runs, converted as ``field`` converts its values;
    named after the field unless ``name`` says otherwise (a field given twice)."""
    # converter=False: Peewee puts the slot itself among the query's parameters
    return peewee.Value(_Slot(name or field.name, field), converter=False)


class Statement:
    """A query built once with :func:`param` where the values go::

        CLAIM = Statement(TopUp.update(status=SUCCEEDED)
                          .where(TopUp.id == param(TopUp.id)))
        CLAIM.rowcount(id=topup_id)

    ``rowcount`` for a write, ``rows`` and ``first`` for what a SELECT or a RETURNING hands
    back, as tuples in the order the query names its columns. A SELECT's columns are read as
    their fields read them; a RETURNING's come as the driver hands them (Peewee keeps what
    an UPDATE returns to itself), so return ids, numbers and text from a write, not datetimes
    or booleans, which SQLite hands back as text and integers. Values are plain values, not
    Peewee expressions.
    """

    def __init__(self, query: peewee.Query):
        self.query = query
        # what Peewee wrote for each kind of database bound: (sql, parameters, names)
        self._built: dict[type, tuple[str, tuple, frozenset]] = {}
        columns = query.selected_columns if isinstance(query, peewee.SelectQuery) else ()
        # a column read back as its field reads it (a datetime from SQLite's text, say)
        self._readers = tuple(column.python_value if isinstance(column, peewee.Field)
                              else None for column in columns)

    def sql(self) -> tuple[str, tuple, frozenset]:
        kind = type(database.obj)
        built = self._built.get(kind)
        if built is None:
            sql, params = self.query.sql()
            names = frozenset(p.name for p in params if isinstance(p, _Slot))
            built = self._built[kind] = (sql, tuple(params), names)
        return built

    def execute(self, **values):
        """Run it with these values; Peewee's cursor."""
        sql, params, names = self.sql()
        if values.keys() != names:
            raise TypeError(f"values for {sorted(names)} expected, {sorted(values)} given")
        return database.execute_sql(sql, [
            p.field.db_value(values[p.name]) if isinstance(p, _Slot) else p for p in params])

    def rowcount(self, **values) -> int:
        """The rows an UPDATE or DELETE changed."""
        return self.execute(**values).rowcount

    def rows(self, **values) -> list[tuple]:
        return [self._read(row) for row in self.execute(**values).fetchall()]

    def first(self, **values) -> tuple | None:
        # every row fetched: SQLite finishes an UPDATE … RETURNING only once it is read out
        rows = self.execute(**values).fetchall()
        return self._read(rows[0]) if rows else None

    def _read(self, row: tuple) -> tuple:
        if not self._readers:
            return row
        return tuple(value if reader is None or value is None else reader(value)
                     for reader, value in zip(self._readers, row))
