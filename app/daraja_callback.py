"""Daraja's STK callback (contract §4): stored durably, acknowledged, applied by a worker.

Callbacks are not signed, so the defences are an unguessable path token compared in
constant time and an optional source-address allowlist.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging

from flask import Blueprint, current_app, request

from app.enqueue import after_the_answer
from app.errors import ApiError
from ledger import inbox
from workers import actors

log = logging.getLogger(__name__)
bp = Blueprint("daraja", __name__)

ACCEPTED = {"ResultCode": 0, "ResultDesc": "Accepted"}
# the same bytes for every callback, as Flask's jsonify writes them, serialised once
ACCEPTED_BODY = json.dumps(ACCEPTED, separators=(",", ":")) + "\n"


def caller_address(remote_addr: str | None, forwarded_for: str | None, trusted_hops: int):
    """The address that reached our first trusted proxy (or us), ``::ffff:`` normalised."""
    candidate = remote_addr
    if trusted_hops > 0 and forwarded_for:
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        if len(hops) >= trusted_hops:
            candidate = hops[-trusted_hops]
    try:
        address = ipaddress.ip_address((candidate or "").strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address


def require_daraja(token: str) -> None:
    """What every URL Daraja posts to checks first (the STK callback, the C2B validation and
    confirmation): the path token, compared in constant time (404 when wrong), then the
    caller's address against DARAJA_CALLBACK_ALLOWED_IPS when it is set (403)."""
    settings = current_app.config["SETTINGS"]
    expected = settings.daraja_callback_token
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(404, "not_found", "No such resource.")
    if settings.daraja_callback_allowed_ips:
        address = caller_address(request.remote_addr, request.headers.get("X-Forwarded-For"),
                                 settings.trusted_proxy_count)
        if address is None or not any(address in net
                                      for net in settings.daraja_callback_allowed_ips):
            log.warning("callback from an address outside the allowlist",
                        extra={"remote_addr": str(address)})
            raise ApiError(403, "forbidden", "This address may not post callbacks.")


@bp.post("/daraja/callback/<token>")
def receive(token: str):
    require_daraja(token)
    row, parsed = inbox.store_callback(request.get_data(cache=False), request.remote_addr)
    if parsed is None:
        # Kept for an operator to read, but not something we can act on.
        raise ApiError(400, "invalid_json", "Not an STK callback body.")
    # Answered first, then enqueued (contract §4): the row is committed, so the answer need
    # not wait on Redis.
    return after_the_answer(
        current_app.response_class(ACCEPTED_BODY, mimetype="application/json"),
        actors.apply_callback, row.seq, checkout_request_id=parsed.checkout_request_id)
