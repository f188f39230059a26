"""GET /v1/events (contract §3): what happened to the account, newest first."""
from __future__ import annotations

from flask import Blueprint, g, request

from app import ids, validation
from app.auth import require_account
from app.errors import ApiError, ValidationFailed
from app.serializers import page
from ledger import events

bp = Blueprint("events", __name__, url_prefix="/v1")
bp.before_request(require_account)


@bp.get("/events")
def list_events():
    limit, starting_after = validation.page_args(request.args)
    event_type = request.args.get("type")
    if event_type is not None and event_type not in events.EVENT_TYPES:
        raise ValidationFailed([{"field": "type",
                                 "message": "must be one of " + ", ".join(events.EVENT_TYPES)}])
    found = events.list_events(g.account.id, event_type=event_type, limit=limit,
                               starting_after=starting_after)
    if found is None:
        raise ApiError(404, "not_found", "starting_after names no event of this account.")
    return page(*found, events.event_object)


@bp.get("/events/<event_id>")
def get_event(event_id):
    row = events.get_event(g.account.id, event_id) if ids.plausible(event_id) else None
    if row is None:
        raise ApiError(404, "not_found", f"No event {event_id[:64]!r}.")
    return events.event_object(row)
