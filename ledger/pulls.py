"""Pull Transactions runs: which window of Daraja's record of the paybill's payments each read
covered, so that the next one starts where the last complete one ended.

Daraja keeps the last 48 hours (``LOOKBACK``). A run's window ends when it starts; the next
starts ``OVERLAP`` before the end of the last run that completed (a payment Daraja records a
little late is still seen), and never more than ``LOOKBACK`` ago. Reading a payment twice does
no harm: the ledger knows it the second time.
"""
from __future__ import annotations

import datetime as dt

from ledger.db import write_transaction
from ledger.models import PullRun, utcnow

LOOKBACK = dt.timedelta(hours=48)
OVERLAP = dt.timedelta(minutes=15)


def next_window(now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """(start, end), naive UTC: from the last complete run's end, less the overlap."""
    now = now or utcnow()
    last = last_complete()
    start = now - LOOKBACK if last is None else max(last.window_end - OVERLAP, now - LOOKBACK)
    return min(start, now), now


def last_complete() -> PullRun | None:
    return (PullRun.select().where(PullRun.finished_at.is_null(False) & PullRun.error.is_null())
            .order_by(PullRun.window_end.desc()).first())


def start(window_start: dt.datetime, window_end: dt.datetime) -> int:
    with write_transaction():
        return PullRun.insert(started_at=utcnow(), window_start=window_start,
                              window_end=window_end).execute()


def finish(run: int, *, pages: int, transactions: int, fed: int,
           error: str | None = None) -> None:
    with write_transaction():
        (PullRun.update(finished_at=utcnow(), pages=pages, transactions=transactions, fed=fed,
                        error=error[:255] if error else None)
         .where(PullRun.seq == run).execute())
