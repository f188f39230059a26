"""One way to page a list: newest first, after the row a client's cursor names.

Every list of the API (and of the operators' reconciliations) pages as Stripe's do:
``limit`` rows, ``has_more``, and ``starting_after`` the id of the last row seen. Rows are
ordered by their ``seq`` (insertion order), so a page never shifts when rows are added.
"""
from __future__ import annotations

import peewee as pw


def newest_first(query: pw.ModelSelect, model: type[pw.Model], *, limit: int,
                 starting_after: str | None, scope=None) -> tuple[list, bool] | None:
    """``(rows, has_more)``; None when ``starting_after`` names no row of ``model`` within
    ``scope`` (the rows the caller may see, whatever the list's other filters)."""
    if starting_after:
        named = model.id == starting_after
        cursor = (model.select(model.seq)
                  .where(named if scope is None else (named & scope)).scalar())
        if cursor is None:
            return None
        query = query.where(model.seq < cursor)
    rows = list(query.order_by(model.seq.desc()).limit(limit + 1))
    return rows[:limit], len(rows) > limit
