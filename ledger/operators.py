"""The people who operate the gateway through its console: their sessions, and what they did.

A session is a row; the console's cookie carries only its id (signed by the app). It is live
until it expires or is ended by signing out, and only a live one opens a console page: an old
cookie kept after signing out opens nothing. Every action taken through the console (a
sign-in, an assignment, a requeue…) is written with its time, the session, the reason given
and what came of it. No Flask here: the console (``app/console``) calls these.
"""
from __future__ import annotations

import datetime as dt
import json
import secrets

from ledger.db import write_transaction
from ledger.models import ConsoleSession, OperatorAction, utcnow


def open_session(lifetime_s: int, *, remote_addr: str | None,
                 user_agent: str | None) -> ConsoleSession:
    """A new live session, ``lifetime_s`` long."""
    now = utcnow()
    with write_transaction():
        return ConsoleSession.create(
            id="cs_" + secrets.token_urlsafe(24), created_at=now,
            expires_at=now + dt.timedelta(seconds=lifetime_s),
            remote_addr=(remote_addr or "")[:64] or None,
            user_agent=(user_agent or "")[:200] or None)


def live_session(session_id) -> ConsoleSession | None:
    """The session with this id if it is neither ended nor expired."""
    if not isinstance(session_id, str) or not session_id.startswith("cs_"):
        return None
    return ConsoleSession.get_or_none((ConsoleSession.id == session_id)
                                      & ConsoleSession.ended_at.is_null()
                                      & (ConsoleSession.expires_at > utcnow()))


def end_session(session_id: str) -> bool:
    """Sign out: the session opens nothing from now on."""
    with write_transaction():
        return bool(ConsoleSession.update(ended_at=utcnow())
                    .where((ConsoleSession.id == session_id)
                           & ConsoleSession.ended_at.is_null()).execute())


def record(action: str, *, session: str | None, target: str = "", reason: str = "",
           outcome: str = "", **detail) -> None:
    """Write down one action. ``detail`` is JSON: never a secret, phones masked."""
    with write_transaction():
        OperatorAction.create(at=utcnow(), session=session, action=action[:40],
                              target=(target or "")[:200], reason=reason or "",
                              outcome=(outcome or "")[:64],
                              detail=json.dumps(detail, default=str))


def recent_actions(limit: int = 100) -> list[OperatorAction]:
    """The latest actions, newest first."""
    return list(OperatorAction.select().order_by(OperatorAction.seq.desc()).limit(limit))
