"""``topupctl scheduler``: run the sweeps every few seconds and enqueue what they find."""
from __future__ import annotations

import logging
import signal
import threading

from ledger import db, orphans, settlement
from workers import actors, c2b, sweeps

log = logging.getLogger(__name__)


# A row re-driven by a sweep is not re-driven again for this long, so that a top-up that
# waits (workers down, a confirming query still pending) does not pile up duplicate
# messages at every sweep.
REDRIVE_EVERY_S = 300


def _first_redrive(redis_client, kind: str, ident, every_s: float = REDRIVE_EVERY_S) -> bool:
    if redis_client is None:
        return True
    try:
        return bool(redis_client.set(f"topup:redriven:{kind}:{ident}", "1", nx=True,
                                     px=max(1, int(every_s * 1000))))
    except Exception:
        return True  # Redis down: the enqueue below fails anyway and is tried next sweep


def _send_queries_due(grace) -> int:
    """A ``query_topup`` for every top-up whose query is due, claimed a batch at a time."""
    sent = 0
    while True:
        claimed = sweeps.queries_due(grace=grace)
        for topup_id in claimed:
            actors.send_query(topup_id)
        sent += len(claimed)
        if len(claimed) < sweeps.BATCH:
            return sent


def sweep_once(give_up_after_s: int, redis_client=None,
               thresholds: sweeps.Thresholds | None = None,
               pull_every_s: float | None = None) -> dict:
    """One pass of every sweep. ``pull_every_s``: ask for a read of Pull Transactions when
    none was asked for this long (DARAJA_PULL=1); None: never."""
    t = thresholds or sweeps.Thresholds()
    with db.connection():
        # First, each claimed query sent at once: a sweep below that fails must not hold
        # back the queries claimed (and re-armed minutes on) by this one.
        queries = _send_queries_due(t.query_overdue_grace)
        unsent = sweeps.unsent_pushes(after=t.unsent_push_after,
                                      released_after=t.released_push_after)
        abandoned = sweeps.abandoned_pushes(after=t.abandoned_sending_after)
        callbacks = sweeps.unapplied_callbacks(after=t.unapplied_callback_after)
        given_up = sweeps.overdue_for_giving_up(give_up_after_s)
        every_s = t.redrive_every.total_seconds()
        orphan_phones = [p for p in sweeps.phones_with_orphans_to_match()
                         if _first_redrive(redis_client, "orphans", p, every_s)]
        for phone in orphan_phones:
            settlement.retry_orphans(phone)
        payments = sweeps.unapplied_c2b_confirmations(after=t.unapplied_callback_after)
        with db.write_transaction():
            orphans_resolved = orphans.resolve_credited()
    unsent = [i for i in unsent if _first_redrive(redis_client, "push", i, every_s)]
    callbacks = [c for c in callbacks if _first_redrive(redis_client, "callback", c, every_s)]
    payments = [c for c in payments if _first_redrive(redis_client, "c2b", c, every_s)]
    for topup_id in unsent:
        actors.push_topup.send(topup_id)
    for seq in callbacks:
        actors.apply_callback.send(seq)
    for seq in payments:
        c2b.apply_c2b.send(seq)
    pulls = 0
    if pull_every_s and _first_redrive(redis_client, "pull", "paybill", pull_every_s):
        c2b.pull_transactions.send()
        pulls = 1
    found = {"unsent_pushes": len(unsent), "abandoned_pushes": len(abandoned),
             "unapplied_callbacks": len(callbacks), "queries_due": queries,
             "given_up": len(given_up), "orphan_phones_retried": len(orphan_phones),
             "unapplied_c2b_confirmations": len(payments), "orphans_resolved": orphans_resolved,
             "pulls_asked": pulls}
    from workers import webhooks  # webhook deliveries due, idempotency keys past retention
    found.update(webhooks.sweep())
    if any(found.values()):
        log.info("sweep", extra=found)
    return found


def run(redis_client, *, give_up_after_s: int, interval_s: float = 5.0,
        stop: threading.Event | None = None,
        thresholds: sweeps.Thresholds | None = None,
        pull_every_s: float | None = None) -> None:
    stop = stop or threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("scheduler started", extra={"interval_s": interval_s})
    while not stop.is_set():
        # One sweep per interval across every scheduler: the lock expires by itself, so a
        # scheduler that dies never blocks the others.
        try:
            if redis_client.set("topup:scheduler:sweep", "1", nx=True, px=int(interval_s * 900)):
                sweep_once(give_up_after_s, redis_client, thresholds, pull_every_s)
        except Exception:
            log.exception("sweep failed; trying again next interval")
        stop.wait(interval_s)
    log.info("scheduler stopped")
