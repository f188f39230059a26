"""Enqueueing after the commit. A lost enqueue is not a lost top-up or callback: the row is
committed first, and the scheduler's sweeps re-drive what was never picked up."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def after_commit(actor, *args, **context) -> bool:
    try:
        actor.send(*args)
        return True
    except Exception as exc:  # Redis down: the sweeper will find the row
        log.warning("enqueue failed; the scheduler will retry",
                    extra={"actor": actor.actor_name, "error": type(exc).__name__, **context})
        return False
