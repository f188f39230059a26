"""The scheduler's sweeps: find work the queues lost and hand it back to them, and start the
STK queries that come due.

Redis carries only work the database can re-create: an enqueue lost
after a commit, a message lost with a restarted Redis, a worker killed mid-message. Each
sweep is a query for rows that should have moved on by now; every action it triggers is
idempotent, so two schedulers sweeping at once do no harm.

A top-up's first STK query is started here too, when its ``next_query_at`` comes (the push's
acceptance set it ``STK_QUERY_AFTER_S`` on): most top-ups are settled by their callback long
before, so a delayed message per push would be sent, held and run only to find nothing to
ask. The queries after the first are the query message's own retries.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ledger import c2b, orphans, pushes, settlement, topups
from ledger.models import (
    PENDING, PUSH_AMBIGUOUS, PUSH_QUEUED, PUSH_SENDING, PUSH_SENT, Callback, OrphanPayment,
    TopUp, utcnow,
)

# A push never attempted is re-enqueued after this long; one put back after a refusal
# waits out the actor's longest backoff first.
UNSENT_PUSH_AFTER = dt.timedelta(seconds=30)
RELEASED_PUSH_AFTER = dt.timedelta(minutes=6)
# A push claimed this long ago without an answer was being sent by a worker that died:
# it may have reached Daraja, so it is never sent again.
ABANDONED_SENDING_AFTER = dt.timedelta(minutes=3)
UNAPPLIED_CALLBACK_AFTER = dt.timedelta(seconds=30)
BATCH = 500


def unsent_pushes(now: dt.datetime | None = None, *, after: dt.timedelta = UNSENT_PUSH_AFTER,
                  released_after: dt.timedelta = RELEASED_PUSH_AFTER) -> list[str]:
    now = now or utcnow()
    query = (TopUp.select(TopUp.id)
             .where((TopUp.status == PENDING) & (TopUp.push_state == PUSH_QUEUED)
                    & (((TopUp.push_attempts == 0) & (TopUp.created_at < now - after))
                       | (TopUp.updated_at < now - released_after)))
             .order_by(TopUp.seq).limit(BATCH))
    return [row.id for row in query]


def abandoned_pushes(now: dt.datetime | None = None, *,
                     after: dt.timedelta = ABANDONED_SENDING_AFTER) -> list[str]:
    """Mark pushes abandoned mid-send as ambiguous; returns their ids."""
    now = now or utcnow()
    stale = [row.id for row in TopUp.select(TopUp.id).where(
        (TopUp.push_state == PUSH_SENDING)
        & (TopUp.push_started_at < now - after)).limit(BATCH)]
    for topup_id in stale:
        pushes.record_push_ambiguous(topup_id, reason="worker stopped while sending")
    return stale


def unapplied_callbacks(now: dt.datetime | None = None, *,
                        after: dt.timedelta = UNAPPLIED_CALLBACK_AFTER) -> list[int]:
    now = now or utcnow()
    query = (Callback.select(Callback.seq)
             .where(Callback.applied_at.is_null()
                    & (Callback.received_at < now - after))
             .order_by(Callback.seq).limit(BATCH))
    return [row.seq for row in query]


def unapplied_c2b_confirmations(now: dt.datetime | None = None, *,
                                after: dt.timedelta = UNAPPLIED_CALLBACK_AFTER) -> list[int]:
    """Stored paybill payments (C2B confirmations, pulled rows) not applied this long after
    they arrived: their message was lost, or its worker died."""
    return c2b.unapplied((now or utcnow()) - after, limit=BATCH)


def phones_with_orphans_to_match(now: dt.datetime | None = None) -> list[str]:
    """Phones with both an unclaimed payment and a push whose answer was lost, within the
    matching window: the rule is tried again for them (``settlement.retry_orphans``), in case a
    try after a push turned ambiguous was lost with its message or its process."""
    since = (now or utcnow()) - orphans.MATCH_WINDOW
    query = (TopUp.select(TopUp.phone).distinct()
             .join(OrphanPayment, on=(OrphanPayment.phone == TopUp.phone))
             .where((TopUp.push_state == PUSH_AMBIGUOUS) & TopUp.checkout_request_id.is_null()
                    & TopUp.status.in_(topups.SETTLEABLE)
                    & (TopUp.push_started_at >= since)
                    & OrphanPayment.resolved_topup.is_null()
                    & OrphanPayment.checkout_request_id.is_null(False)
                    & (OrphanPayment.created_at >= since))
             .limit(BATCH))
    return [row.phone for row in query]


# A query chain that is alive re-arms next_query_at on every attempt; the sweeper steps in
# only when one is this far overdue (its message was lost with Redis or a killed worker).
QUERY_OVERDUE_GRACE = dt.timedelta(seconds=60)


# A query the sweep sent is left to its message this long before the sweep looks again.
QUERY_REARM = dt.timedelta(minutes=5)


def queries_due(now: dt.datetime | None = None, *,
                grace: dt.timedelta = QUERY_OVERDUE_GRACE) -> list[str]:
    """Claim the pushed top-ups still pending whose first query is due (none asked yet), or
    whose query chain is ``grace`` overdue: at most BATCH, the oldest first. Each is re-armed
    QUERY_REARM on by the statement that claims it, so that a sweep beside this one (another
    scheduler) does not claim it too, and the next sweeps leave it to the message sent for
    it; the query itself sets its next check when it is asked."""
    now = now or utcnow()
    due = ((TopUp.status == PENDING) & (TopUp.push_state == PUSH_SENT)
           & (TopUp.next_query_at <= now)
           & ((TopUp.query_attempts == 0) | (TopUp.next_query_at < now - grace)))
    oldest = TopUp.select(TopUp.id).where(due).order_by(TopUp.seq).limit(BATCH)
    claimed = (TopUp.update(next_query_at=now + QUERY_REARM)
               .where(TopUp.id.in_(oldest) & due)
               .returning(TopUp.id).execute())
    return [row.id for row in claimed]


def overdue_for_giving_up(give_up_after_s: int, now: dt.datetime | None = None) -> list[str]:
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=give_up_after_s)
    stale = [row.id for row in TopUp.select(TopUp.id).where(
        (TopUp.status == PENDING) & (TopUp.created_at < cutoff)).limit(BATCH)]
    return [topup_id for topup_id in stale if settlement.give_up(topup_id, give_up_after_s, now)]


@dataclass(frozen=True)
class Thresholds:
    """How long each kind of row may sit before a sweep re-drives it (the constants of this
    module by default; `topupctl scheduler` reads them from the settings, and tests that kill
    parts on purpose shorten them rather than wait minutes)."""
    unsent_push_after: dt.timedelta = UNSENT_PUSH_AFTER
    released_push_after: dt.timedelta = RELEASED_PUSH_AFTER
    abandoned_sending_after: dt.timedelta = ABANDONED_SENDING_AFTER
    unapplied_callback_after: dt.timedelta = UNAPPLIED_CALLBACK_AFTER
    query_overdue_grace: dt.timedelta = QUERY_OVERDUE_GRACE
    redrive_every: dt.timedelta = dt.timedelta(seconds=300)  # scheduler.REDRIVE_EVERY_S

    @classmethod
    def from_settings(cls, settings) -> "Thresholds":
        return cls(*(dt.timedelta(seconds=s) for s in (
            settings.sweep_unsent_push_after_s, settings.sweep_released_push_after_s,
            settings.sweep_abandoned_push_after_s, settings.sweep_unapplied_callback_after_s,
            settings.sweep_query_grace_s, settings.sweep_redrive_every_s)))
