"""The paybill's actors (contract §6): thin, idempotent, retry policy declared here.

- ``apply_c2b(seq)``: settle a stored C2B confirmation (``ledger.c2b.apply_stored``). Sent by
  the confirmation endpoint after its answer, and by the scheduler's sweep for a stored one
  not applied. Applying a row twice does nothing the second time.
- ``pull_transactions()``: read the window of Pull Transactions since the last complete pull
  and credit what no confirmation brought (:mod:`workers.pull`). Sent by the scheduler every
  ``DARAJA_PULL_EVERY_S`` when ``DARAJA_PULL=1``. A Daraja that is busy, unreachable or
  answers unreadably is asked again with backoff (a pull changes nothing at Daraja); a
  refusal that no retry cures (credentials, the API product) is logged and left to the next
  interval.
"""
from __future__ import annotations

import logging

import dramatiq

from daraja import errors as daraja_errors
from ledger import c2b
from telemetry import logs
from workers import pull, runtime
from workers.actors import CALLBACKS_QUEUE, QUERIES_QUEUE, _retryable

log = logging.getLogger(__name__)


@dramatiq.actor(queue_name=CALLBACKS_QUEUE, max_retries=20, min_backoff=1_000,
                max_backoff=120_000, retry_when=_retryable(20), time_limit=60_000)
def apply_c2b(seq: int) -> None:
    logs.amend(c2b_confirmation=seq)
    c2b.apply_stored(seq, shortcode=runtime.get().settings.daraja_c2b_shortcode)


@dramatiq.actor(queue_name=QUERIES_QUEUE, max_retries=5, min_backoff=10_000,
                max_backoff=300_000, retry_when=_retryable(5), time_limit=300_000)
def pull_transactions() -> None:
    rt = runtime.get()
    try:
        pull.pull(rt.daraja, shortcode=rt.settings.daraja_c2b_shortcode)
    except daraja_errors.DarajaError as exc:
        # a lost answer too: a pull is safe to repeat, whatever became of the last one
        if exc.retryable or isinstance(exc, daraja_errors.AmbiguousResponse):
            raise dramatiq.Retry(f"{type(exc).__name__}: {exc}") from None
        log.error("pull refused by Daraja; tried again next interval",
                  extra={"error": type(exc).__name__, "error_code": exc.error_code})
