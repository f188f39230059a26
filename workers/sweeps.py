"""The scheduler's sweeps: find work the queues lost and hand it back to them.

Redis carries work the database can re-create (engineering-notes.md): an enqueue lost
after a commit, a message lost with a restarted Redis, a worker killed mid-message. Each
sweep is a query for rows that should have moved on by now; every action it triggers is
idempotent, so two schedulers sweeping at once do no harm.
"""
from __future__ import annotations

import datetime as dt

from ledger.models import (
    PENDING, PUSH_QUEUED, PUSH_SENDING, PUSH_SENT, Callback, TopUp, utcnow,
)
from ledger import topups

# A push never attempted is re-enqueued after this long; one put back after a refusal
# waits out the actor's longest backoff first.
UNSENT_PUSH_AFTER = dt.timedelta(seconds=30)
RELEASED_PUSH_AFTER = dt.timedelta(minutes=6)
# A push claimed this long ago without an answer was being sent by a worker that died:
# it may have reached Daraja, so it is never sent again.
ABANDONED_SENDING_AFTER = dt.timedelta(minutes=3)
UNAPPLIED_CALLBACK_AFTER = dt.timedelta(seconds=30)
BATCH = 500


def unsent_pushes(now: dt.datetime | None = None) -> list[str]:
    now = now or utcnow()
    query = (TopUp.select(TopUp.id)
             .where((TopUp.status == PENDING) & (TopUp.push_state == PUSH_QUEUED)
                    & (((TopUp.push_attempts == 0) & (TopUp.created_at < now - UNSENT_PUSH_AFTER))
                       | (TopUp.updated_at < now - RELEASED_PUSH_AFTER)))
             .order_by(TopUp.seq).limit(BATCH))
    return [row.id for row in query]


def abandoned_pushes(now: dt.datetime | None = None) -> list[str]:
    """Mark pushes abandoned mid-send as ambiguous; returns their ids."""
    now = now or utcnow()
    stale = [row.id for row in TopUp.select(TopUp.id).where(
        (TopUp.push_state == PUSH_SENDING)
        & (TopUp.push_started_at < now - ABANDONED_SENDING_AFTER)).limit(BATCH)]
    for topup_id in stale:
        topups.record_push_ambiguous(topup_id, reason="worker stopped while sending")
    return stale


def unapplied_callbacks(now: dt.datetime | None = None) -> list[int]:
    now = now or utcnow()
    query = (Callback.select(Callback.seq)
             .where(Callback.applied_at.is_null()
                    & (Callback.received_at < now - UNAPPLIED_CALLBACK_AFTER))
             .order_by(Callback.seq).limit(BATCH))
    return [row.seq for row in query]


# A query chain that is alive re-arms next_query_at on every attempt; the sweeper steps in
# only when one is this far overdue (its message was lost with Redis or a killed worker).
QUERY_OVERDUE_GRACE = dt.timedelta(seconds=60)


def queries_due(now: dt.datetime | None = None) -> list[str]:
    now = now or utcnow()
    due = [row.id for row in TopUp.select(TopUp.id).where(
        (TopUp.status == PENDING) & (TopUp.push_state == PUSH_SENT)
        & (TopUp.next_query_at < now - QUERY_OVERDUE_GRACE)).order_by(TopUp.seq).limit(BATCH)]
    if due:
        # re-arm so that the next sweep does not enqueue them again while they run
        TopUp.update(next_query_at=now + dt.timedelta(minutes=5)).where(
            TopUp.id.in_(due) & (TopUp.status == PENDING)).execute()
    return due


def overdue_for_giving_up(give_up_after_s: int, now: dt.datetime | None = None) -> list[str]:
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=give_up_after_s)
    stale = [row.id for row in TopUp.select(TopUp.id).where(
        (TopUp.status == PENDING) & (TopUp.created_at < cutoff)).limit(BATCH)]
    return [topup_id for topup_id in stale if topups.give_up(topup_id, give_up_after_s, now)]
