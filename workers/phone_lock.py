"""One prompt per phone: Daraja refuses a second STK prompt to a phone with one open.

The lock is a Redis key per phone whose value names the top-up holding it, set when its push
is about to go and kept at most ``PHONE_LOCK_S``. It is released where that is rare and cheap
(a push that did not go out, a query or a give-up that settled the top-up) but not when a
callback settles it: that is every credit, and one Redis round trip each. A later push for
the phone that finds the lock held by another top-up asks the database instead: a holder no
longer pending (or unknown to this database) has no prompt open, and the lock is taken over
in one compare-and-set, so of two pushes doing so at once one wins.

Without Redis the rule cannot be kept, and the push goes ahead: Daraja itself refuses a
second prompt ("Unable to lock subscriber"), which is retried like any "busy" answer.
"""
from __future__ import annotations

import logging

from ledger.models import PENDING, TopUp
from ledger.phones import mask

log = logging.getLogger(__name__)

# A prompt lives about a minute; a second top-up for the phone waits this long at most.
PHONE_LOCK_S = 120
PHONE_BUSY_RETRY_S = 15

# Release only our own lock: the value still names this top-up.
RELEASE_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# Take over the lock from the settled top-up ARGV[1] (or from nobody: it has just expired).
TAKE_OVER_LOCK = """
local holder = redis.call('get', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[2], 'px', ARGV[3])
  return 1
end
return 0
"""


def key(phone: str) -> str:
    return f"topup:phone-lock:{phone}"


def lock(redis, phone: str, topup_id: str) -> bool:
    """Take the phone's lock for this top-up; False while another top-up's prompt may be open."""
    if redis is None:
        return True
    name = key(phone)
    try:
        if redis.set(name, topup_id, nx=True, px=PHONE_LOCK_S * 1000):
            return True
        holder = (redis.get(name) or b"").decode()
    except Exception:
        return _unavailable(phone)
    if holder == topup_id:
        return True
    if holder and _prompt_may_be_open(holder):
        return False
    try:
        # register_script keeps the script's SHA: EVALSHA, loaded again if Redis forgot it
        return bool(redis.register_script(TAKE_OVER_LOCK)(
            keys=[name], args=[holder, topup_id, PHONE_LOCK_S * 1000]))
    except Exception:
        return _unavailable(phone)


def unlock(redis, phone: str | None, topup_id: str) -> None:
    if redis is None or not phone:
        return
    try:
        redis.register_script(RELEASE_LOCK)(keys=[key(phone)], args=[topup_id])
    except Exception:
        pass  # it expires by itself, or the next push for the phone takes it over


def _prompt_may_be_open(holder: str) -> bool:
    """Whether the top-up holding a phone's lock may still have its prompt open: it is
    pending. One unknown to this database (another database on the same Redis) is not
    waited for: if its prompt is open, Daraja refuses ours as busy and the push is retried."""
    status = TopUp.select(TopUp.status).where(TopUp.id == holder).scalar()
    if status is None:
        log.warning("phone lock held by a top-up unknown to this database",
                    extra={"holder": holder})
    return status == PENDING


def _unavailable(phone: str) -> bool:
    log.warning("phone lock unavailable", extra={"phone": mask(phone)})
    return True
