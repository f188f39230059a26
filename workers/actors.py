"""The actors: thin, idempotent, retry policy declared here. Messages carry ids and
primitives only."""
from __future__ import annotations

import logging

import dramatiq

from workers import runtime, tasks

log = logging.getLogger(__name__)

TOPUPS_QUEUE = "topups"
CALLBACKS_QUEUE = "callbacks"
QUERIES_QUEUE = "queries"

# Waiting is a Retry: Dramatiq logs it at INFO ("Retrying message … in … ms") and backs off,
# where any other exception is logged at ERROR with its traceback. The database blinking
# (restart, failover, lost connection) is worth retrying too, and worth an ERROR line.
DATABASE_ERRORS = tasks.DATABASE_ERRORS


def _retryable(limit: int):
    def retry_when(retries: int, exc: BaseException) -> bool:
        return isinstance(exc, (dramatiq.Retry, *DATABASE_ERRORS)) and retries < limit
    return retry_when


# The attempt count that really bounds a push lives in the database (MAX_PUSH_ATTEMPTS);
# this only bounds the messages. The sweeper re-drives a push whose messages ran out.
@dramatiq.actor(queue_name=TOPUPS_QUEUE, max_retries=20, min_backoff=5_000,
                max_backoff=300_000, retry_when=_retryable(20), time_limit=120_000)
def push_topup(topup_id: str) -> None:
    rt = runtime.get()
    try:
        outcome, early_callbacks = tasks.push(topup_id, rt.daraja, redis=rt.redis,
                                              query_after_s=rt.settings.stk_query_after_s)
    except tasks.PushNotSentYet as exc:
        delay = int(exc.retry_after_s * 1000) if exc.retry_after_s else None
        raise dramatiq.Retry(str(exc), delay=delay) from None
    except tasks.PushOutcomeNotRecorded as exc:
        _hand_on(topup_id, exc.outcome)
        return
    if outcome == "sent":
        _apply_early_callbacks(rt, early_callbacks)


def _hand_on(topup_id: str, outcome: dict) -> None:
    # the line names what happened (a CheckoutRequestID, say) before it lives only in Redis
    log.warning("push outcome not recorded yet: handed to its own message",
                extra={"topup_id": topup_id, "outcome": outcome})
    try:
        record_push_outcome.send(topup_id, outcome)
    except Exception:
        log.error("push outcome not recorded and not handed on: record it by hand",
                  extra={"topup_id": topup_id, "outcome": outcome})
        raise


@dramatiq.actor(queue_name=TOPUPS_QUEUE, max_retries=30, min_backoff=1_000,
                max_backoff=60_000, retry_when=_retryable(30), time_limit=60_000)
def record_push_outcome(topup_id: str, outcome: dict) -> None:
    """What became of a push, when the database could not take it at once: retried here with
    backoff until it is recorded (a database restart takes tens of seconds)."""
    rt = runtime.get()
    early_callbacks = tasks.record_push_outcome(topup_id, outcome)
    if outcome["kind"] == "accepted":
        _apply_early_callbacks(rt, early_callbacks)
    elif outcome["kind"] == "claim_lost":
        push_topup.send(topup_id)   # the claim is put back: send the push


def _apply_early_callbacks(rt, early_callbacks: list[int]) -> None:
    # Nothing else follows an accepted push here: its first STK query is the scheduler's
    # (the push set next_query_at STK_QUERY_AFTER_S on, and the sweep sends the query then if
    # no callback has settled the top-up), so no message per push waits meanwhile.
    for callback_seq in early_callbacks:
        _apply_early_callback(rt, callback_seq)


def _apply_early_callback(rt, callback_seq: int) -> None:
    # A callback that arrived while the push was in flight could not be matched then; it is
    # applied here, in this thread, rather than as a message of its own. Anything the
    # message's retries would handle (a database blink, a wait) goes back to the message.
    # If this process dies here, the scheduler re-applies the stored callback.
    try:
        tasks.apply_callback(callback_seq, daraja=rt.daraja,
                             confirm_by_query=rt.settings.daraja_confirm_by_query)
    except Exception as exc:
        log.info("early callback sent to its queue",
                 extra={"callback": callback_seq, "error": type(exc).__name__})
        apply_callback.send(callback_seq)


def send_query(topup_id: str) -> None:
    """Ask Daraja how ``topup_id`` ended, now; while it has no final word the message retries
    with STK_QUERY_BACKOFF_S doubling (the scheduler sends it when the query is due)."""
    backoff_ms = int(runtime.get().settings.stk_query_backoff_s * 1000)
    query_topup.send_with_options(args=(topup_id,), min_backoff=backoff_ms)


# A stored callback is never lost (the scheduler re-applies unapplied ones); retries only make
# it quicker when the database blinks or a confirming query, or a push's answer, must be
# waited for.
@dramatiq.actor(queue_name=CALLBACKS_QUEUE, max_retries=20, min_backoff=1_000,
                max_backoff=120_000, retry_when=_retryable(20), time_limit=60_000)
def apply_callback(callback_seq: int) -> None:
    rt = runtime.get()
    try:
        tasks.apply_callback(callback_seq, daraja=rt.daraja,
                             confirm_by_query=rt.settings.daraja_confirm_by_query)
    except tasks.AskAgainLater as exc:
        raise dramatiq.Retry(str(exc)) from None


# Growing, jittered delays (min_backoff doubling up to max_backoff). When a chain runs out,
# the sweeper starts another until STK_GIVE_UP_AFTER_S makes the top-up unknown.
@dramatiq.actor(queue_name=QUERIES_QUEUE, max_retries=25, min_backoff=10_000,
                max_backoff=tasks.QUERY_MAX_BACKOFF_S * 1000, retry_when=_retryable(25),
                time_limit=60_000)
def query_topup(topup_id: str) -> None:
    rt = runtime.get()
    try:
        tasks.query(topup_id, rt.daraja, redis=rt.redis,
                    give_up_after_s=rt.settings.stk_give_up_after_s,
                    backoff_s=rt.settings.stk_query_backoff_s)
    except tasks.AskAgainLater as exc:
        raise dramatiq.Retry(str(exc)) from None
