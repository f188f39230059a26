"""Rate limits on the client API (contract §3, ``rate_limited``).

Counted in Redis (``REDIS_URL``), so every API process shares one count. If Redis
cannot be reached the limits fall back to each process's memory and the request goes on:
a Redis outage must not turn writes into 500s (flask-limiter's in-memory fallback, with
``swallow_errors`` behind it; it logs and keeps checking whether Redis is back).

Three limits:

- Writes, per API key and per endpoint: ``WRITE_LIMIT`` unless the app is built with
  ``RATELIMIT_WRITES`` (tests). Reads are not counted.
- Failed authentications (401s), per client address over every /v1/ endpoint:
  ``FAILED_AUTHENTICATION_LIMIT`` unless the app is built with
  ``RATELIMIT_FAILED_AUTHENTICATIONS``. Past it, every /v1/ request from that address answers
  429 before its key is looked up, so guessing keys gets nowhere, not even with a right one.
- Failed sign-ins to the operator's console (``POST /console/login`` answered 401), per
  client address: ``CONSOLE_SIGN_IN_LIMIT`` unless the app is built with
  ``RATELIMIT_CONSOLE_SIGN_INS``. Past it the form answers 429, whatever token it carries.

Health checks, the OpenAPI document, the operations endpoints, the rest of the console and
Daraja's callback are not limited.
"""
from __future__ import annotations

import hashlib
import math
import time

from flask import Flask, current_app, request
from flask_limiter import ApplicationLimit, Limiter
from flask_limiter.errors import RateLimitExceeded

from app.daraja_callback import caller_address
from app.errors import problem

# Stripe's own write limit in live mode; a burst of 50 concurrent debits from one key fits.
WRITE_LIMIT = "100 per second"
_WRITE_METHODS = frozenset(("POST", "PUT", "PATCH", "DELETE"))
# A client with a mistyped or revoked key fails a few times, not 20 times a minute; a guesser
# gets 20 tries a minute per address against keys with 190 random bits.
FAILED_AUTHENTICATION_LIMIT = "20 per minute"
# The ops token is long and random; a person mistypes it a few times, a guesser gets nowhere.
CONSOLE_SIGN_IN_LIMIT = "10 per minute"
CONSOLE_SIGN_IN = "/console/login"


def caller() -> str:
    """The API key presented (as a hash: no key is ever written to Redis), else the address."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() == "bearer" and key:
        return "key:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:32]
    return "addr:" + (request.remote_addr or "unknown")


def client_address() -> str:
    """The address the request came from, through TRUSTED_PROXY_COUNT proxies of ours, whatever
    key it carries: a guesser changes keys, not addresses."""
    address = caller_address(request.remote_addr, request.headers.get("X-Forwarded-For"),
                             current_app.config["SETTINGS"].trusted_proxy_count)
    return "addr:" + (str(address) if address is not None else "unknown")


def _not_a_client_request() -> bool:
    return not request.path.startswith("/v1/")


def _not_limited() -> bool:
    """Neither the client API nor the console's sign-in: the limiter does not look."""
    return _not_a_client_request() and request.path != CONSOLE_SIGN_IN


def _not_a_sign_in() -> bool:
    return request.path != CONSOLE_SIGN_IN or request.method != "POST"


def _not_a_client_write() -> bool:
    return request.method not in _WRITE_METHODS or _not_a_client_request()


def _authentication_failed(response) -> bool:
    # every 401 under /v1/ is require_account refusing the key (or its absence)
    return response.status_code == 401


def _write_limit() -> str:
    return current_app.config.get("RATELIMIT_WRITES", WRITE_LIMIT)


def _failed_authentication_limit() -> str:
    return current_app.config.get("RATELIMIT_FAILED_AUTHENTICATIONS",
                                  FAILED_AUTHENTICATION_LIMIT)


def _console_sign_in_limit() -> str:
    return current_app.config.get("RATELIMIT_CONSOLE_SIGN_INS", CONSOLE_SIGN_IN_LIMIT)


def storage_uri(redis_url: str) -> str:
    # the limits library spells a Redis socket path redis+unix://
    return "redis+" + redis_url if redis_url.startswith("unix://") else redis_url


def init(app: Flask, redis_url: str) -> Limiter:
    app.config.setdefault("RATELIMIT_STORAGE_URI", storage_uri(redis_url))
    app.config.setdefault("RATELIMIT_STORAGE_OPTIONS",
                          {"socket_timeout": 0.5, "socket_connect_timeout": 0.5})
    # Failed authentications are a limit with deduct_when rather than counts kept by hand in
    # require_account: flask-limiter then tests the count before the request (before
    # require_account, a blueprint hook, looks the key up), adds to it only after a 401, and
    # gives this limit the same Redis storage, in-memory fallback and 429 answer as the writes.
    # An application limit is one count per address shared by every endpoint.
    failed_authentications = ApplicationLimit(
        _failed_authentication_limit, key_function=client_address,
        scope="failed-authentication", deduct_when=_authentication_failed,
        exempt_when=_not_a_client_request,
        error_message="Too many failed authentications from this address")
    limiter = Limiter(
        key_func=caller,
        default_limits=[_write_limit],
        default_limits_exempt_when=_not_a_client_write,
        application_limits=[failed_authentications],
        strategy="fixed-window",
        key_prefix="topup:ratelimit",
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        headers_enabled=False,
    )
    # Health checks, the OpenAPI document, Daraja's callback and the console (but its sign-in)
    # skip the limiter at its first test, before it looks up the view's limits: the callback
    # is a hot path (make bench) with no API key.
    limiter.request_filter(_not_limited)
    limiter.init_app(app)
    if "console" in app.blueprints:
        # the console's own 429 page answers it (app/console)
        limiter.limit(_console_sign_in_limit, key_func=client_address,
                      scope="console-sign-in", deduct_when=_authentication_failed,
                      exempt_when=_not_a_sign_in,
                      error_message="Too many failed sign-ins from this address"
                      )(app.blueprints["console"])

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded):
        retry_after = 1
        current = limiter.current_limit
        if current is not None:
            try:
                retry_after = max(1, math.ceil(current.window[0] - time.time()))
            except Exception:  # the storage went away between the count and now
                retry_after = 1
        # the failed-authentication limit words its own reason; the write limit is per key
        reason = (exc.description if exc.limit.error_message
                  else "Too many requests for this API key")
        return problem(429, "rate_limited",
                       f"{reason} ({exc.limit.limit}); retry in {retry_after} s.",
                       headers={"Retry-After": str(retry_after)})

    return limiter
