"""Reading Daraja's Pull Transactions and feeding the ledger what no confirmation brought
(contract §6): ``topupctl daraja pull`` runs it, and the ``pull_transactions`` actor when the
scheduler asks (``DARAJA_PULL=1``, every ``DARAJA_PULL_EVERY_S``).

Page after page (``OffSetValue`` counting the records read so far) until a page is empty;
every row whose receipt the ledger does not know (credited, or kept as an orphan) is stored
as a pulled report and applied at once, by the confirmation's own path (``ledger.c2b``): a
confirmation lost on the way is credited by the next pull.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from daraja import errors as daraja_errors
from ledger import c2b, pulls
from ledger.db import write_transaction
from ledger.models import utcnow

log = logging.getLogger(__name__)

# A window holds at most this many pages: a loop that never ends is a bug, not a busy day.
MAX_PAGES = 1000


@dataclass(frozen=True)
class Pulled:
    window_start: dt.datetime
    window_end: dt.datetime
    pages: int
    transactions: int
    fed: int
    outcomes: dict


def pull(daraja, *, shortcode: str, since: dt.datetime | None = None,
         until: dt.datetime | None = None) -> Pulled:
    """Read one window (``since``/``until`` in naive UTC; by default the one after the last
    complete run) and feed the ledger. A Daraja error is raised after the run is recorded
    with it; the rows fed before it stay fed."""
    if since is None:
        start, end = pulls.next_window()
    else:
        start, end = since, until or utcnow()
    run = pulls.start(start, end)
    pages = seen = fed = 0
    outcomes: dict[str, int] = {}
    try:
        offset = 0
        while pages < MAX_PAGES:
            page = daraja.pull_transactions(shortcode=shortcode, start=start, end=end,
                                            offset=offset)
            pages += 1
            if not page.transactions:
                break
            seen += len(page.transactions)
            offset += len(page.transactions)
            for outcome in feed(page.transactions, shortcode=shortcode):
                fed += 1
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        else:
            log.warning("pull stopped after the most pages a window may have",
                        extra={"pages": pages, "rows": seen})
    except daraja_errors.DarajaError as exc:
        pulls.finish(run, pages=pages, transactions=seen, fed=fed,
                     error=f"{type(exc).__name__}: {exc}")
        raise
    pulls.finish(run, pages=pages, transactions=seen, fed=fed)
    log.info("pull read", extra={"pages": pages, "rows": seen, "fed": fed, **outcomes})
    return Pulled(start, end, pages, seen, fed, outcomes)


def feed(rows: list, *, shortcode: str | None) -> list[str]:
    """Store and apply the rows whose receipt the ledger does not know; their outcomes."""
    fresh: dict[str, dict] = {}
    for row in rows:
        try:
            receipt = c2b.parse_pulled(row).receipt
        except c2b.MalformedPayment as exc:
            log.warning("pull row is not a payment; left out", extra={"error": str(exc)})
            continue
        fresh.setdefault(receipt, row)
    known = c2b.known_receipts(list(fresh))
    outcomes = []
    for receipt, row in fresh.items():
        if receipt in known:
            continue
        with write_transaction():
            seq = c2b.store_pulled(row)
        outcomes.append(c2b.apply_stored(seq, shortcode=shortcode))
    return outcomes
