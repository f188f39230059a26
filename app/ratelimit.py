"""Rate limits on the client API (contract §3, ``rate_limited``).

Counted in Redis (``REDIS_URL``), so every API process shares one count, by the ``limits``
library's fixed windows. If Redis cannot be reached the counts fall back to each process's
memory and the request goes on: a Redis outage must not turn writes into 500s. Redis is
tried again every :data:`REDIS_RETRY_S` seconds.

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
Daraja's callback are not limited, and do no limiter work: the callback is a hot path
(``make bench``). That is why this is ``limits`` itself, asked by two request hooks, rather
than flask-limiter, whose hooks looked up the limits that apply to every request.
"""
from __future__ import annotations

import hashlib
import logging
import math
import threading
import time

import limits
import limits.errors
from flask import Flask, current_app, request
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from app.daraja_callback import caller_address
from app.errors import ApiError

log = logging.getLogger(__name__)

# Stripe's own write limit in live mode; a burst of 50 concurrent debits from one key fits.
WRITE_LIMIT = "100 per second"
_WRITE_METHODS = frozenset(("POST", "PUT", "PATCH", "DELETE"))
# A client with a mistyped or revoked key fails a few times, not 20 times a minute; a guesser
# gets 20 tries a minute per address against keys with 190 random bits.
FAILED_AUTHENTICATION_LIMIT = "20 per minute"
# The ops token is long and random; a person mistypes it a few times, a guesser gets nowhere.
CONSOLE_SIGN_IN_LIMIT = "10 per minute"
CONSOLE_SIGN_IN = "/console/login"
CLIENT_API = "/v1/"
# while Redis is down, each process counts in its memory and asks Redis again this often
REDIS_RETRY_S = 30


class RateLimited(ApiError):
    """429 ``rate_limited``, with Retry-After: the seconds until the window resets."""

    def __init__(self, reason: str, limit: limits.RateLimitItem, retry_after: int):
        super().__init__(429, "rate_limited", f"{reason} ({limit}); retry in {retry_after} s.",
                         headers={"Retry-After": str(retry_after)})


class SignInsLimited(Exception):
    """Too many failed sign-ins to the console: its own page answers (app/console)."""


class Counts:
    """Fixed-window counts in Redis, or in this process's memory while Redis is down."""

    def __init__(self, storage_uri: str, options: dict):
        # wrap_exceptions: the storage's own errors (Redis refused, timed out…) come as
        # StorageError, and only those mean "count in memory"; anything else is a bug
        self.shared = FixedWindowRateLimiter(
            storage_from_string(storage_uri, wrap_exceptions=True, **options))
        self.local = FixedWindowRateLimiter(MemoryStorage())
        self._lock = threading.Lock()
        self._redis_down_until = 0.0

    def _ask(self, method: str, limit, identifiers):
        if time.monotonic() >= self._redis_down_until:
            try:
                return getattr(self.shared, method)(limit, *identifiers)
            except limits.errors.StorageError as exc:  # a Redis outage: count in memory
                with self._lock:
                    self._redis_down_until = time.monotonic() + REDIS_RETRY_S
                log.warning("rate limit counts unreachable; counting in this process's memory",
                            extra={"error": type(exc).__name__})
        return getattr(self.local, method)(limit, *identifiers)

    def hit(self, limit: limits.RateLimitItem, *identifiers: str) -> bool:
        """Count one; False when that one is past the limit."""
        return self._ask("hit", limit, identifiers)

    def test(self, limit: limits.RateLimitItem, *identifiers: str) -> bool:
        """True while the limit is not reached (counts nothing)."""
        return self._ask("test", limit, identifiers)

    def retry_after(self, limit: limits.RateLimitItem, *identifiers: str) -> int:
        reset_at = self._ask("get_window_stats", limit, identifiers).reset_time
        return max(1, math.ceil(reset_at - time.time()))


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


def _limit(name: str, default: str) -> limits.RateLimitItem:
    return limits.parse(current_app.config.get(name, default))


def _failed_authentications() -> limits.RateLimitItem:
    return _limit("RATELIMIT_FAILED_AUTHENTICATIONS", FAILED_AUTHENTICATION_LIMIT)


def _console_sign_ins() -> limits.RateLimitItem:
    return _limit("RATELIMIT_CONSOLE_SIGN_INS", CONSOLE_SIGN_IN_LIMIT)


def _is_sign_in() -> bool:
    return request.path == CONSOLE_SIGN_IN and request.method == "POST"


def _before_the_view() -> None:
    """Refuse a request past its limits before the view (and before the key is looked up)."""
    if request.endpoint is None:
        return   # no such resource (404, 405): nothing to count, and the answer says so
    if request.path.startswith(CLIENT_API):
        counts, address = current_app.extensions["rate_limits"], client_address()
        failures = _failed_authentications()
        if not counts.test(failures, "failed-authentication", address):
            raise RateLimited("Too many failed authentications from this address", failures,
                              counts.retry_after(failures, "failed-authentication", address))
        if request.method in _WRITE_METHODS:
            writes, who = _limit("RATELIMIT_WRITES", WRITE_LIMIT), caller()
            if not counts.hit(writes, "writes", who, request.endpoint):
                raise RateLimited("Too many requests for this API key", writes,
                                  counts.retry_after(writes, "writes", who, request.endpoint))
    elif _is_sign_in():
        counts = current_app.extensions["rate_limits"]
        if not counts.test(_console_sign_ins(), "console-sign-in", client_address()):
            raise SignInsLimited()


def _count_a_failure(response):
    """A 401 from the client API or the console's sign-in counts against the address."""
    if response.status_code == 401:
        if request.path.startswith(CLIENT_API):
            current_app.extensions["rate_limits"].hit(
                _failed_authentications(), "failed-authentication", client_address())
        elif _is_sign_in():
            current_app.extensions["rate_limits"].hit(
                _console_sign_ins(), "console-sign-in", client_address())
    return response


def storage_uri(redis_url: str) -> str:
    # the limits library spells a Redis socket path redis+unix://
    return "redis+" + redis_url if redis_url.startswith("unix://") else redis_url


def init(app: Flask, redis_url: str) -> Counts:
    app.config.setdefault("RATELIMIT_STORAGE_URI", storage_uri(redis_url))
    # keys "topup:ratelimit:LIMITER/…": ours, apart from Dramatiq's
    app.config.setdefault("RATELIMIT_STORAGE_OPTIONS",
                          {"socket_timeout": 0.5, "socket_connect_timeout": 0.5,
                           "key_prefix": "topup:ratelimit"})
    counts = Counts(app.config["RATELIMIT_STORAGE_URI"], app.config["RATELIMIT_STORAGE_OPTIONS"])
    app.extensions["rate_limits"] = counts
    app.before_request(_before_the_view)
    app.after_request(_count_a_failure)
    return counts
