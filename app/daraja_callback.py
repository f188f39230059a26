"""Daraja's STK callback (contract §4): stored durably, acknowledged, applied by a worker.

Callbacks are not signed, so the defences are an unguessable path token compared in
constant time and an optional source-address allowlist.
"""
from __future__ import annotations

import functools
import hmac
import io
import ipaddress
import logging
import time

from flask import Blueprint, current_app, g, jsonify, request

import telemetry.metrics as metrics
from app.enqueue import sender
from app.errors import ApiError
from ledger import inbox
from workers import actors

log = logging.getLogger(__name__)
bp = Blueprint("daraja", __name__)

ACCEPTED = {"ResultCode": 0, "ResultDesc": "Accepted"}


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


def _allowed(settings, remote_addr, forwarded_for) -> bool:
    if not settings.daraja_callback_allowed_ips:
        return True
    address = caller_address(remote_addr, forwarded_for, settings.trusted_proxy_count)
    return address is not None and any(address in net
                                       for net in settings.daraja_callback_allowed_ips)


def _enqueue_on_close(seq: int, checkout_request_id: str | None):
    # Answered first, then enqueued (contract §4): the row is committed, so the answer need
    # not wait on Redis; a lost enqueue is re-driven by the scheduler's unapplied-callback sweep.
    return functools.partial(sender.submit, actors.apply_callback, seq,
                             checkout_request_id=checkout_request_id)


@bp.post("/daraja/callback/<token>")
def receive(token: str):
    settings = current_app.config["SETTINGS"]
    expected = settings.daraja_callback_token
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(404, "not_found", "No such resource.")
    if not _allowed(settings, request.remote_addr, request.headers.get("X-Forwarded-For")):
        address = caller_address(request.remote_addr, request.headers.get("X-Forwarded-For"),
                                 settings.trusted_proxy_count)
        log.warning("callback from an address outside the allowlist",
                    extra={"remote_addr": str(address)})
        raise ApiError(403, "forbidden", "This address may not post callbacks.")
    stored = request.environ.pop(STORED, None)
    if stored is None:
        row, parsed = inbox.store_callback(request.get_data(cache=False), request.remote_addr)
    else:  # stored by the common case (CommonCase below), which left the answer to us
        g.ops_request_started = request.environ.get(STARTED, g.get("ops_request_started"))
        if isinstance(stored, BaseException):
            raise stored
        row, parsed = stored
    if parsed is None:
        # Kept for an operator to read, but not something we can act on.
        raise ApiError(400, "invalid_json", "Not an STK callback body.")
    response = jsonify(ACCEPTED)
    response.call_on_close(_enqueue_on_close(row.seq, parsed.checkout_request_id))
    return response


# --- the common case, without Flask's request machinery ----------------------------------------

STORED = "topup.callback_stored"    # environ keys: a client cannot set them (headers are HTTP_*)
STARTED = "topup.callback_started"


class CommonCase:
    """WSGI middleware in front of the Flask app: a callback with the right token, from an
    allowed address, with a body of a stated length within the limit, is stored and, when it
    is well formed, answered here, without Flask's request context, hooks and routing.

    Those cost the API more CPU per callback than the trivial endpoint's whole request (make
    bench, "Callback acknowledgement"). Everything else goes to Flask untouched: a wrong
    token, another method or path, an address outside the allowlist, a missing or too large
    Content-Length, a chunked body. When storing fails, or the body is not a callback, the
    outcome is handed to the Flask view (in the environ), which answers exactly as it does
    for a callback it stored itself: the same problem+json, the same status, the same logs.
    The answer here is the view's, byte for byte; it records the acknowledgement's latency as
    ``app.ops`` does, and enqueues once the answer is sent, as the view does.
    """

    PREFIX = "/daraja/callback/"

    def __init__(self, app, wsgi_app):
        self.wsgi_app = wsgi_app
        self.config = app.config   # read per request, as the view reads it
        with app.app_context():
            accepted = jsonify(ACCEPTED)
        self.body = accepted.get_data()
        self.headers = [(k, v) for k, v in accepted.headers.items()]
        self.status = accepted.status

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "POST" or not path.startswith(self.PREFIX):
            return self.wsgi_app(environ, start_response)
        started = time.perf_counter()
        settings = self.config["SETTINGS"]
        token = settings.daraja_callback_token
        length = environ.get("CONTENT_LENGTH", "")
        if (not token
                or not hmac.compare_digest(path[len(self.PREFIX):].encode("latin-1", "replace"),
                                           token.encode())
                or not (length.isascii() and length.isdigit())
                or int(length) > (self.config["MAX_CONTENT_LENGTH"] or 0)
                or "HTTP_TRANSFER_ENCODING" in environ
                or not _allowed(settings, environ.get("REMOTE_ADDR"),
                                environ.get("HTTP_X_FORWARDED_FOR"))):
            return self.wsgi_app(environ, start_response)
        try:
            body = environ["wsgi.input"].read(int(length)) if int(length) else b""
        except Exception as exc:  # noqa: BLE001 - the client went away: the view's answer
            return self._to_flask(environ, start_response, exc, started)
        if len(body) != int(length):   # cut short: Flask reads what came, as it would have
            environ["wsgi.input"] = io.BytesIO(body)
            return self.wsgi_app(environ, start_response)
        try:
            row, parsed = inbox.store_callback(body, environ.get("REMOTE_ADDR"))
        except Exception as exc:  # noqa: BLE001 - answered by the view's error handlers
            return self._to_flask(environ, start_response, exc, started)
        if parsed is None:
            return self._to_flask(environ, start_response, (row, parsed), started)
        metrics.callback_acknowledged(200, time.perf_counter() - started)
        start_response(self.status, list(self.headers))
        return _Answer(self.body, _enqueue_on_close(row.seq, parsed.checkout_request_id))

    def _to_flask(self, environ, start_response, stored, started):
        environ[STORED], environ[STARTED] = stored, started
        environ["wsgi.input"] = io.BytesIO(b"")
        environ["CONTENT_LENGTH"] = "0"
        return self.wsgi_app(environ, start_response)


class _Answer:
    """The response body, with the enqueue run when the server closes it."""

    def __init__(self, body: bytes, on_close):
        self.body, self.on_close = body, on_close

    def __iter__(self):
        yield self.body

    def close(self):
        self.on_close()
