"""The access token, shared: one per credentials across the whole fleet, one fetch at a time.

Daraja's FAQ says each new token may invalidate the previous one, so twenty worker processes
must not each fetch their own. Both caches implement::

    cache.get(fetch, now, *, margin_s=0, scope=None) -> str
    cache.invalidate(token, *, scope=None) -> bool

``fetch()`` performs the OAuth call and returns ``(access_token, expires_in_seconds)``; it is
called only by the holder of the refresh lock. ``now`` is a Unix time (the client's clock).
``scope`` (``DarajaConfig.token_scope``, a short hash of base_url + consumer_key) is appended to
the key, so sandbox and production credentials never share a token. ``invalidate`` removes the
cached token only if it is still that token (compare-and-delete): twenty workers that saw
"Invalid Access Token" for the same token cause one refresh, not twenty.

Stored value: JSON ``{"token": …, "expires_at": now + expires_in, "expires_in": …}`` with an
ABSOLUTE expiry. A token is stale when ``expires_at - margin <= now``; the margin is capped at
half the token's lifetime, so a short-lived token (a simulator's) is still reused for a while
instead of being refetched on every call. The Redis key's TTL drops it at expiry anyway.
"""
from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from typing import Callable

from daraja import errors

__all__ = ["RedisTokenCache", "MemoryTokenCache", "DEFAULT_KEY"]

log = logging.getLogger("daraja.tokens")

DEFAULT_KEY = "topup:daraja:token"

Fetch = Callable[[], "tuple[str, float]"]

# Delete KEYS[1] only if it still holds ARGV[1] (the lock's random value, or the exact cached
# JSON in which the refused token was seen).
_COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def _fresh(entry: dict | None, now: float, margin_s: float) -> str | None:
    """The entry's token if it is not stale at ``now``, else None."""
    if not entry:
        return None
    try:
        token = entry["token"]
        expires_at = float(entry["expires_at"])
        lifetime = entry.get("expires_in")
        margin = float(margin_s)
        if lifetime is not None:
            margin = min(margin, float(lifetime) / 2)
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(token, str) or not token:
        return None
    if expires_at - margin <= now:
        return None
    return token


def _entry(token: str, issued_at: float, expires_in: float) -> dict:
    return {"token": token, "expires_at": issued_at + float(expires_in),
            "expires_in": float(expires_in)}


class MemoryTokenCache:
    """One process's token cache (unit tests, a single process). Thread-safe: one fetch at a
    time, the other threads wait for it. NOT for a fleet: use :class:`RedisTokenCache`."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict[str | None, dict] = {}

    def get(self, fetch: Fetch, now: float, *, margin_s: float = 0.0,
            scope: str | None = None) -> str:
        started = time.monotonic()
        with self._lock:
            now = now + (time.monotonic() - started)  # time spent waiting for the lock
            token = _fresh(self._entries.get(scope), now, margin_s)
            if token is not None:
                return token
            token, expires_in = fetch()
            self._entries[scope] = _entry(token, now, expires_in)
            return token

    def invalidate(self, token: str, *, scope: str | None = None) -> bool:
        with self._lock:
            entry = self._entries.get(scope)
            if entry is not None and entry.get("token") == token:
                del self._entries[scope]
                return True
            return False

    def peek(self, *, scope: str | None = None) -> dict | None:
        """The stored entry (tests and diagnostics)."""
        with self._lock:
            entry = self._entries.get(scope)
            return dict(entry) if entry else None


class RedisTokenCache:
    """The fleet's token in Redis, refreshed by one process at a time.

    When the cached token is missing or stale, a process takes the lock
    (``SET lock_key <random> NX PX lock_ttl``), re-reads the cache (another process may just
    have refreshed it), fetches, stores, and releases the lock with compare-and-delete.
    Processes that fail to take the lock poll the cache (50 ms, doubling to 500 ms) for up to
    ``wait_s`` seconds, trying the lock again between polls in case it was released or expired
    (a holder whose fetch failed); they never fetch without it. Past ``wait_s`` they raise
    :class:`~daraja.errors.TokenUnavailable` (retryable; nothing was sent).

    Keys: the token lives at ``f"{key}:{scope}"`` (just ``key`` when the client passes no scope),
    the lock at ``lock_key`` if given, else ``f"{that}:lock"``. Keep ``lock_ttl_s`` above the
    client's connect + read timeouts, or a slow fetch could outlive its lock.

    ``redis`` is any redis-py-like client (``get``, ``set(nx=, px=)``, ``eval``); bytes or str
    answers are both accepted. ``sleep`` and ``monotonic`` can be replaced in tests.

    A token read from Redis is used again without asking Redis for up to ``local_s``
    seconds (and never once stale): the GET per Daraja call was ~7% of a push's CPU. A token
    replaced meanwhile by another process is at worst refused once by Daraja, which the
    client answers as for any refused token: :meth:`invalidate` (which forgets the local
    copy), a fresh read, one retry. ``local_s=0`` reads Redis on every call.
    """

    def __init__(self, redis, key: str = DEFAULT_KEY, lock_key: str | None = None,
                 lock_ttl_s: float = 30, wait_s: float = 20, *,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic, local_s: float = 5.0):
        self._redis = redis
        self._key = key
        self._lock_key = lock_key
        self._lock_ttl_ms = max(1, int(lock_ttl_s * 1000))
        self._wait_s = float(wait_s)
        self._sleep = sleep
        self._monotonic = monotonic
        self._local_s = float(local_s)
        self._local: dict[str, tuple[dict, float]] = {}   # key -> (entry, read at)

    # -- keys ---------------------------------------------------------------------------

    def key_for(self, scope: str | None = None) -> str:
        return f"{self._key}:{scope}" if scope else self._key

    def lock_key_for(self, scope: str | None = None) -> str:
        return self._lock_key or f"{self.key_for(scope)}:lock"

    # -- the interface --------------------------------------------------------------------

    def get(self, fetch: Fetch, now: float, *, margin_s: float = 0.0,
            scope: str | None = None) -> str:
        key, lock_key = self.key_for(scope), self.lock_key_for(scope)
        started = self._monotonic()

        def clock() -> float:  # the caller's clock, advanced by the time spent here
            return now + (self._monotonic() - started)

        local = self._local.get(key)
        if local is not None and started - local[1] < self._local_s:
            token = _fresh(local[0], clock(), margin_s)
            if token is not None:
                return token
        entry = self._read(key)[0]
        token = _fresh(entry, clock(), margin_s)
        if token is not None:
            self._local[key] = (entry, started)
            return token
        deadline = started + self._wait_s
        delay = 0.05
        while True:
            lock_value = secrets.token_hex(16)
            if self._redis.set(lock_key, lock_value, nx=True, px=self._lock_ttl_ms):
                try:
                    token = _fresh(self._read(key)[0], clock(), margin_s)
                    if token is not None:
                        return token
                    issued_at = clock()
                    token, expires_in = fetch()
                    entry = _entry(token, issued_at, expires_in)
                    self._store(key, entry)
                    self._local[key] = (entry, self._monotonic())
                    return token
                finally:
                    self._release(lock_key, lock_value)
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise errors.TokenUnavailable(
                    f"the access token refresh lock stayed taken for {self._wait_s:g} s")
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)
            token = _fresh(self._read(key)[0], clock(), margin_s)
            if token is not None:
                return token

    def invalidate(self, token: str, *, scope: str | None = None) -> bool:
        key = self.key_for(scope)
        self._local.pop(key, None)
        entry, raw = self._read(key)
        if entry is None or entry.get("token") != token:
            return False
        return bool(self._redis.eval(_COMPARE_AND_DELETE, 1, key, raw))

    def peek(self, *, scope: str | None = None) -> dict | None:
        """The stored entry (tests and diagnostics)."""
        return self._read(self.key_for(scope))[0]

    # -- helpers ----------------------------------------------------------------------------

    def _read(self, key: str) -> tuple[dict | None, str | None]:
        raw = self._redis.get(key)
        if raw is None:
            return None, None
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        try:
            entry = json.loads(raw)
        except ValueError:
            return None, raw
        return (entry if isinstance(entry, dict) else None), raw

    def _store(self, key: str, entry: dict) -> None:
        ttl_ms = int(entry["expires_in"] * 1000)
        if ttl_ms <= 0:
            return
        try:
            self._redis.set(key, json.dumps(entry, separators=(",", ":")), px=ttl_ms)
        except Exception as exc:  # the token is fetched: better used once than wasted
            log.warning("could not store the access token in Redis: %s", type(exc).__name__)

    def _release(self, lock_key: str, lock_value: str) -> None:
        try:
            self._redis.eval(_COMPARE_AND_DELETE, 1, lock_key, lock_value)
        except Exception as exc:  # it expires on its own after lock_ttl_s
            log.warning("could not release the token refresh lock: %s", type(exc).__name__)
