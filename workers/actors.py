"""The actors: thin, idempotent, retry policy declared here. Messages carry ids only."""
from __future__ import annotations

import dramatiq
import peewee

from workers import runtime, tasks

# The database blinked (restart, failover, lost connection): worth retrying the message.
DATABASE_ERRORS = (peewee.OperationalError, peewee.InterfaceError)

TOPUPS_QUEUE = "topups"
CALLBACKS_QUEUE = "callbacks"


def _retry_push(retries: int, exc: BaseException) -> bool:
    # The attempt count that really bounds a push lives in the database (MAX_PUSH_ATTEMPTS);
    # this only bounds the messages.
    return (isinstance(exc, (tasks.PushNotSentYet, dramatiq.Retry, *DATABASE_ERRORS))
            and retries < 20)


@dramatiq.actor(queue_name=TOPUPS_QUEUE, max_retries=20, min_backoff=5_000,
                max_backoff=300_000, retry_when=_retry_push, time_limit=120_000)
def push_topup(topup_id: str) -> None:
    rt = runtime.get()
    try:
        _, early_callbacks = tasks.push(topup_id, rt.daraja,
                                        query_after_s=rt.settings.stk_query_after_s)
    except tasks.PushNotSentYet as exc:
        if exc.retry_after_s:
            raise dramatiq.Retry(str(exc), delay=int(exc.retry_after_s * 1000)) from None
        raise
    for callback_seq in early_callbacks:
        apply_callback.send(callback_seq)


def _retry_callback(retries: int, exc: BaseException) -> bool:
    # A stored callback is never lost (the scheduler re-applies unapplied ones); retries
    # only make it quicker when the database blinks.
    return isinstance(exc, DATABASE_ERRORS) and retries < 20


@dramatiq.actor(queue_name=CALLBACKS_QUEUE, max_retries=20, min_backoff=1_000,
                max_backoff=120_000, retry_when=_retry_callback, time_limit=60_000)
def apply_callback(callback_seq: int) -> None:
    tasks.apply_callback(callback_seq)
