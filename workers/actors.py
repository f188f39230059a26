"""The actors: thin, idempotent, retry policy declared here. Messages carry ids only."""
from __future__ import annotations

import logging

import dramatiq
import peewee

from workers import runtime, tasks

log = logging.getLogger(__name__)

# The database blinked (restart, failover, lost connection): worth retrying the message.
DATABASE_ERRORS = (peewee.OperationalError, peewee.InterfaceError)

TOPUPS_QUEUE = "topups"
CALLBACKS_QUEUE = "callbacks"
QUERIES_QUEUE = "queries"


def _retry_push(retries: int, exc: BaseException) -> bool:
    # The attempt count that really bounds a push lives in the database (MAX_PUSH_ATTEMPTS);
    # this only bounds the messages. The sweeper re-drives a push whose messages ran out.
    return (isinstance(exc, (tasks.PushNotSentYet, dramatiq.Retry, *DATABASE_ERRORS))
            and retries < 20)


@dramatiq.actor(queue_name=TOPUPS_QUEUE, max_retries=20, min_backoff=5_000,
                max_backoff=300_000, retry_when=_retry_push, time_limit=120_000)
def push_topup(topup_id: str) -> None:
    rt = runtime.get()
    try:
        outcome, early_callbacks = tasks.push(topup_id, rt.daraja, redis=rt.redis,
                                              query_after_s=rt.settings.stk_query_after_s)
    except tasks.PushNotSentYet as exc:
        if exc.retry_after_s:
            raise dramatiq.Retry(str(exc), delay=int(exc.retry_after_s * 1000)) from None
        raise
    if outcome == "sent":
        # first: once this is sent, the push is followed up whatever happens below
        schedule_query(topup_id, delay_s=rt.settings.stk_query_after_s)
    for callback_seq in early_callbacks:
        _apply_early_callback(rt, callback_seq)


def _apply_early_callback(rt, callback_seq: int) -> None:
    # A callback that arrived while the push was in flight could not be matched then; it is
    # applied here, in this thread with its connection, rather than as a message of its own:
    # a message costs its enqueue, fetch, middleware and ack (~1 ms of worker CPU measured,
    # beside the task), and with a Daraja that calls back at once (the bench's simulator)
    # 3 top-ups in 4 had one. Anything the message's retries would handle (a database blink,
    # a confirming query that must wait) goes back to the message. If this process dies
    # here, the scheduler re-applies the stored callback, as for a lost send.
    try:
        tasks.apply_callback(callback_seq, daraja=rt.daraja,
                             confirm_by_query=rt.settings.daraja_confirm_by_query)
    except Exception as exc:
        log.info("early callback sent to its queue",
                 extra={"callback": callback_seq, "error": type(exc).__name__})
        apply_callback.send(callback_seq)


def schedule_query(topup_id: str, *, delay_s: float) -> None:
    backoff_ms = int(runtime.get().settings.stk_query_backoff_s * 1000)
    query_topup.send_with_options(args=(topup_id,), delay=int(delay_s * 1000),
                                  min_backoff=backoff_ms)


def _retry_callback(retries: int, exc: BaseException) -> bool:
    # A stored callback is never lost (the scheduler re-applies unapplied ones); retries
    # only make it quicker when the database blinks or a confirming query must wait.
    return (isinstance(exc, (tasks.AskAgainLater, *DATABASE_ERRORS))) and retries < 20


@dramatiq.actor(queue_name=CALLBACKS_QUEUE, max_retries=20, min_backoff=1_000,
                max_backoff=120_000, retry_when=_retry_callback, time_limit=60_000)
def apply_callback(callback_seq: int) -> None:
    rt = runtime.get()
    tasks.apply_callback(callback_seq, daraja=rt.daraja,
                         confirm_by_query=rt.settings.daraja_confirm_by_query)


def _retry_query(retries: int, exc: BaseException) -> bool:
    # Growing, jittered delays (min_backoff doubling up to max_backoff). When a chain runs
    # out, the sweeper starts another until STK_GIVE_UP_AFTER_S makes the top-up unknown.
    return isinstance(exc, (tasks.AskAgainLater, *DATABASE_ERRORS)) and retries < 25


@dramatiq.actor(queue_name=QUERIES_QUEUE, max_retries=25, min_backoff=10_000,
                max_backoff=600_000, retry_when=_retry_query, time_limit=60_000)
def query_topup(topup_id: str) -> None:
    rt = runtime.get()
    tasks.query(topup_id, rt.daraja, redis=rt.redis,
                give_up_after_s=rt.settings.stk_give_up_after_s)
