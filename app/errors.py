"""Every error is application/problem+json (RFC 9457) with the contract's codes."""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    "invalid_json": "Invalid JSON",
    "unauthorized": "Unauthorized",
    "insufficient_funds": "Insufficient funds",
    "forbidden": "Forbidden",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "idempotency_conflict": "Idempotency key reused",
    "payload_too_large": "Payload too large",
    "unsupported_media_type": "Unsupported media type",
    "validation_failed": "Validation failed",
    "rate_limited": "Too many requests",
    "service_unavailable": "Service unavailable",
    "internal_error": "Internal error",
}

_CODE_FOR_STATUS = {400: "invalid_json", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                    405: "method_not_allowed", 413: "payload_too_large",
                    415: "unsupported_media_type", 429: "rate_limited",
                    503: "service_unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, *, errors=None, headers=None):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.errors = errors
        self.headers = headers or {}


class ValidationFailed(ApiError):
    def __init__(self, errors: list[dict]):
        fields = ", ".join(e["field"] for e in errors)
        super().__init__(422, "validation_failed", f"Invalid fields: {fields}", errors=errors)


def problem(status: int, code: str, detail: str, *, errors=None, headers=None):
    body = {"type": f"https://docs.topup-gateway.dev/errors/{code}",
            "title": _TITLES.get(code, code.replace("_", " ").capitalize()),
            "status": status, "detail": detail, "code": code}
    if errors is not None:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    response.mimetype = PROBLEM_JSON
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return problem(exc.status, exc.code, exc.detail, errors=exc.errors, headers=exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        code = _CODE_FOR_STATUS.get(status, "invalid_json" if status == 400 else "not_found")
        detail = {413: "The request body is too large.",
                  404: "No such resource.",
                  405: "Method not allowed on this resource."}.get(status, exc.description or "")
        headers = {}
        if status == 405 and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        return problem(status, code, detail, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # A database or Redis that is down is a 503 the client may retry, not a 500.
        import redis

        from ledger import db
        if isinstance(exc, db.DATABASE_ERRORS):
            db.discard_connection()   # the thread's next request connects afresh
        if isinstance(exc, (*db.DATABASE_ERRORS, redis.RedisError)):
            log.warning("dependency unavailable: %s: %s", type(exc).__name__, str(exc)[:200])
            return problem(503, "service_unavailable", "A dependency is unavailable; retry later.",
                           headers={"Retry-After": "1"})
        log.exception("unhandled error")
        return problem(500, "internal_error", "Something went wrong on our side.")
