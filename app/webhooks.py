"""Webhook endpoints (contract §3): created with a secret shown once, listed, deleted.

The secret is in the 201 answer only. A retry of the creation with the same
Idempotency-Key and body answers that same 201, secret included: the key exists for the
client whose first answer was lost, and without the secret the endpoint it created would
be useless to it (Stripe answers a replay the same way). Listings never show it.
"""
from __future__ import annotations

import json

from flask import Blueprint, current_app, g, request

from app import ids, validation
from app.auth import require_account
from app.errors import ApiError, ValidationFailed
from app.idempotent import conflict, respond
from app.serializers import page, timestamp
from ledger import events, idempotency, webhooks
from workers import webhook_urls

bp = Blueprint("webhook_endpoints", __name__, url_prefix="/v1")
bp.before_request(require_account)

ENDPOINT = "POST /v1/webhook_endpoints"


def endpoint_object(row) -> dict:
    return {"id": row.id, "object": "webhook_endpoint", "url": row.url,
            "events": json.loads(row.events), "created_at": timestamp(row.created_at)}


def created_object(row) -> dict:
    return {**endpoint_object(row), "secret": row.secret}


def endpoint_request(body: dict) -> dict:
    errors = [{"field": name, "message": "is not a known field"}
              for name in sorted(set(body) - {"url", "events"})]
    url = body.get("url")
    try:
        webhook_urls.parse(url)
    except webhook_urls.UnsafeUrl as exc:
        errors.append({"field": "url", "message": str(exc)})
    wanted = body.get("events")
    kinds = " and ".join(events.EVENT_TYPES)
    if (not isinstance(wanted, list) or not wanted
            or not all(isinstance(e, str) and e in events.EVENT_TYPES for e in wanted)):
        errors.append({"field": "events", "message": f"must be a non-empty list of {kinds}"})
        wanted = []
    if errors:
        raise ValidationFailed(errors)
    return {"url": url, "events": list(dict.fromkeys(wanted))}


@bp.post("/webhook_endpoints")
def create_endpoint():
    key = validation.idempotency_key(request)
    fields = endpoint_request(validation.json_body(request))
    fingerprint = idempotency.fingerprint(fields)
    account_id = g.account.id
    try:
        # A retry answers from the stored answer, without resolving the host again.
        previous = idempotency.previous_answer(account_id, ENDPOINT, key, fingerprint)
        if previous is not None:
            return respond(previous)
        settings = current_app.config["SETTINGS"]
        try:
            webhook_urls.check(fields["url"], allow_private=settings.webhook_allow_private,
                               resolver=current_app.config.get("WEBHOOK_RESOLVER",
                                                               webhook_urls.resolve))
        except webhook_urls.UnsafeUrl as exc:
            raise ValidationFailed([{"field": "url", "message": str(exc)}]) from None
        answer = idempotency.run_once(
            account_id, ENDPOINT, key, fingerprint,
            lambda: (201, created_object(webhooks.create_endpoint(account_id, **fields))))
    except idempotency.IdempotencyConflict:
        raise conflict() from None
    return respond(answer)


@bp.get("/webhook_endpoints")
def list_endpoints():
    limit, starting_after = validation.page_args(request.args)
    found = webhooks.list_endpoints(g.account.id, limit=limit, starting_after=starting_after)
    if found is None:
        raise ApiError(404, "not_found",
                       "starting_after names no webhook endpoint of this account.")
    return page(*found, endpoint_object)


@bp.get("/webhook_endpoints/<endpoint_id>")
def get_endpoint(endpoint_id):
    row = None
    if ids.plausible(endpoint_id):
        row = webhooks.get_endpoint(g.account.id, endpoint_id)
    if row is None:
        raise ApiError(404, "not_found", f"No webhook endpoint {endpoint_id[:64]!r}.")
    return endpoint_object(row)


@bp.delete("/webhook_endpoints/<endpoint_id>")
def delete_endpoint(endpoint_id):
    deleted = ids.plausible(endpoint_id) and webhooks.delete_endpoint(g.account.id, endpoint_id)
    if not deleted:
        raise ApiError(404, "not_found", f"No webhook endpoint {endpoint_id[:64]!r}.")
    return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}
