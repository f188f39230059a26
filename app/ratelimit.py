"""Rate limits per API key on the client API's write endpoints (contract §3, ``rate_limited``).

Counted in Redis (``REDIS_URL``), so every API process shares one count per key. If Redis
cannot be reached the limits fall back to each process's memory and the request goes on:
a Redis outage must not turn writes into 500s (flask-limiter's in-memory fallback, with
``swallow_errors`` behind it; it logs and keeps checking whether Redis is back).

The limit is per API key and per endpoint, ``WRITE_LIMIT`` unless the app is built with
``RATELIMIT_WRITES`` (tests). Reads, health checks and Daraja's callback are not limited.
"""
from __future__ import annotations

import hashlib
import math
import time

from flask import Flask, current_app, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from app.errors import problem

# Stripe's own write limit in live mode; a burst of 50 concurrent debits from one key fits.
WRITE_LIMIT = "100 per second"
_WRITE_METHODS = frozenset(("POST", "PUT", "PATCH", "DELETE"))


def caller() -> str:
    """The API key presented (as a hash: no key is ever written to Redis), else the address."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() == "bearer" and key:
        return "key:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:32]
    return "addr:" + (request.remote_addr or "unknown")


def _not_a_client_write() -> bool:
    return request.method not in _WRITE_METHODS or not request.path.startswith("/v1/")


def _write_limit() -> str:
    return current_app.config.get("RATELIMIT_WRITES", WRITE_LIMIT)


def storage_uri(redis_url: str) -> str:
    # the limits library spells a Redis socket path redis+unix://
    return "redis+" + redis_url if redis_url.startswith("unix://") else redis_url


def init(app: Flask, redis_url: str) -> Limiter:
    app.config.setdefault("RATELIMIT_STORAGE_URI", storage_uri(redis_url))
    app.config.setdefault("RATELIMIT_STORAGE_OPTIONS",
                          {"socket_timeout": 0.5, "socket_connect_timeout": 0.5})
    limiter = Limiter(
        key_func=caller,
        default_limits=[_write_limit],
        default_limits_exempt_when=_not_a_client_write,
        strategy="fixed-window",
        key_prefix="topup:ratelimit",
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        headers_enabled=False,
    )
    # Reads, health checks and Daraja's callback skip the limiter at its first test, before
    # it looks up the view's limits: the callback is a hot path (make bench) with no API key.
    limiter.request_filter(_not_a_client_write)
    limiter.init_app(app)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded):
        retry_after = 1
        current = limiter.current_limit
        if current is not None:
            try:
                retry_after = max(1, math.ceil(current.window[0] - time.time()))
            except Exception:  # the storage went away between the count and now
                retry_after = 1
        return problem(429, "rate_limited",
                       f"Too many requests for this API key ({exc.description}); "
                       f"retry in {retry_after} s.",
                       headers={"Retry-After": str(retry_after)})

    return limiter
