"""Enqueueing after the commit, with the actor's own ``send``.

A lost enqueue (Redis down, the process killed before it sent) is not a lost top-up or
callback: the row is committed first, and the scheduler's sweeps (``workers.sweeps``) re-drive
a push never picked up and a callback never applied. So a send that fails is logged and left
to them: it never turns a request whose row is committed into an error.
"""
from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)


def after_commit(actor, *args, **log_fields) -> bool:
    """``actor.send(*args)``; False, with a warning, when the message could not be sent."""
    try:
        actor.send(*args)
        return True
    except Exception as exc:  # noqa: BLE001 - Redis down: the sweep will find the row
        log.warning("enqueue failed; the scheduler will retry",
                    extra={"actor": actor.actor_name, "error": type(exc).__name__,
                           **log_fields})
        return False


def after_the_answer(response, actor, *args, **log_fields):
    """``after_commit(actor, *args)`` once the server has written ``response`` and closes it:
    for a row committed before the answer (a Daraja callback or confirmation), whose answer
    need not wait on Redis. Returns the response."""
    response.call_on_close(functools.partial(after_commit, actor, *args, **log_fields))
    return response
