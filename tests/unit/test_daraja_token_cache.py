"""The shared token cache on its own: absolute expiry, compare-and-delete, one fetch at a time.

Each "process" is its own fakeredis client on one shared FakeServer, as twenty workers on
several machines would each hold their own connection to one Redis.
"""
from __future__ import annotations

import json
import threading
import time

import fakeredis
import pytest

from daraja import MemoryTokenCache, RedisTokenCache, errors

SCOPE = "abc123def456"


class CountingFetch:
    """A fake OAuth call: counts calls, can be slow, can fail."""

    def __init__(self, expires_in=3599, delay=0.0, fail=None):
        self.calls = 0
        self.expires_in = expires_in
        self.delay = delay
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            self.calls += 1
            n = self.calls
        if self.delay:   # a slow OAuth call: others come while it is in flight
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return f"token-{n}", self.expires_in


@pytest.fixture
def server():
    return fakeredis.FakeServer()


def a_process(server):
    return fakeredis.FakeStrictRedis(server=server)


@pytest.fixture(params=["redis", "memory"])
def cache(request, server):
    if request.param == "redis":
        return RedisTokenCache(a_process(server))
    return MemoryTokenCache()


def test_a_cold_cache_fetches_once_and_then_serves_the_cached_token(cache):
    fetch = CountingFetch()
    assert cache.get(fetch, 1000.0, margin_s=120, scope=SCOPE) == "token-1"
    assert cache.get(fetch, 1001.0, margin_s=120, scope=SCOPE) == "token-1"
    assert cache.get(fetch, 1000.0 + 3599 - 121, margin_s=120, scope=SCOPE) == "token-1"
    assert fetch.calls == 1


def test_a_token_within_the_margin_of_its_expiry_is_refreshed(cache):
    fetch = CountingFetch()
    cache.get(fetch, 1000.0, margin_s=120, scope=SCOPE)
    assert cache.get(fetch, 1000.0 + 3599 - 119, margin_s=120, scope=SCOPE) == "token-2"
    assert fetch.calls == 2


def test_the_expiry_is_stored_as_an_absolute_time(cache):
    cache.get(CountingFetch(expires_in=3599), 1000.0, margin_s=120, scope=SCOPE)
    entry = cache.peek(scope=SCOPE)
    assert entry["token"] == "token-1"
    assert entry["expires_at"] == pytest.approx(1000.0 + 3599, abs=1)


def test_a_short_lived_token_is_still_reused_for_half_its_life(cache):
    fetch = CountingFetch(expires_in=60)
    cache.get(fetch, 1000.0, margin_s=120, scope=SCOPE)
    assert cache.get(fetch, 1020.0, margin_s=120, scope=SCOPE) == "token-1"
    assert cache.get(fetch, 1031.0, margin_s=120, scope=SCOPE) == "token-2"


def test_invalidate_removes_the_token_only_if_it_is_still_the_cached_one(cache):
    fetch = CountingFetch()
    cache.get(fetch, 1000.0, scope=SCOPE)
    assert cache.invalidate("token-1", scope=SCOPE) is True
    assert cache.get(fetch, 1000.0, scope=SCOPE) == "token-2"
    # a slower worker reports the old token refused: the new one must survive
    assert cache.invalidate("token-1", scope=SCOPE) is False
    assert cache.get(fetch, 1000.0, scope=SCOPE) == "token-2"
    assert fetch.calls == 2


def test_different_scopes_never_share_a_token(cache):
    fetch = CountingFetch()
    assert cache.get(fetch, 1000.0, scope="sandbox") == "token-1"
    assert cache.get(fetch, 1000.0, scope="production") == "token-2"
    assert cache.get(fetch, 1000.0, scope="sandbox") == "token-1"


def test_a_failed_fetch_raises_and_the_next_call_fetches_again(cache):
    failing = CountingFetch(fail=errors.ConnectionFailed("no route"))
    with pytest.raises(errors.ConnectionFailed):
        cache.get(failing, 1000.0, scope=SCOPE)
    assert cache.get(CountingFetch(), 1000.0, scope=SCOPE) == "token-1"


def test_the_redis_key_holds_json_with_a_ttl_and_a_scoped_name(server):
    redis = a_process(server)
    cache = RedisTokenCache(redis)
    cache.get(CountingFetch(expires_in=3599), 1000.0, scope=SCOPE)
    key = f"topup:daraja:token:{SCOPE}"
    assert json.loads(redis.get(key))["token"] == "token-1"
    assert 3590_000 < redis.pttl(key) <= 3599_000
    assert not redis.exists(f"{key}:lock")  # released


def test_the_lock_is_released_when_the_fetch_fails(server):
    redis = a_process(server)
    cache = RedisTokenCache(redis)
    with pytest.raises(errors.AuthenticationError):
        cache.get(CountingFetch(fail=errors.AuthenticationError("bad key")), 1000.0, scope=SCOPE)
    assert not redis.exists(f"topup:daraja:token:{SCOPE}:lock")


def test_a_process_that_cannot_take_the_lock_waits_for_the_holders_token(server):
    holder = a_process(server)
    holder.set(f"topup:daraja:token:{SCOPE}:lock", "someone-else", px=30_000)
    waited = []

    def holder_finishes_while_the_waiter_waits(seconds):
        waited.append(seconds)
        entry = {"token": "holders-token", "expires_at": 1000.0 + 3599, "expires_in": 3599}
        holder.set(f"topup:daraja:token:{SCOPE}", json.dumps(entry), px=3599_000)

    waiter = RedisTokenCache(a_process(server), sleep=holder_finishes_while_the_waiter_waits)
    fetch = CountingFetch()
    assert waiter.get(fetch, 1000.0, scope=SCOPE) == "holders-token"
    assert len(waited) == 1 and fetch.calls == 0


def test_a_waiter_takes_over_when_the_holder_releases_the_lock_without_a_token(server):
    lock_key = f"topup:daraja:token:{SCOPE}:lock"
    other = a_process(server)
    other.set(lock_key, "someone-else", px=30_000)
    waited = []

    def holder_gives_up_while_the_waiter_waits(seconds):
        waited.append(seconds)
        other.delete(lock_key)

    fetch = CountingFetch()
    waiter = RedisTokenCache(a_process(server), sleep=holder_gives_up_while_the_waiter_waits)
    assert waiter.get(fetch, 1000.0, scope=SCOPE) == "token-1"
    assert len(waited) == 1 and fetch.calls == 1


def test_a_waiter_never_fetches_without_the_lock_and_gives_up_after_wait_s(server):
    a_process(server).set(f"topup:daraja:token:{SCOPE}:lock", "stuck", px=30_000)
    slept = []
    clock = [0.0]

    def fake_sleep(seconds):
        slept.append(seconds)
        clock[0] += seconds

    cache = RedisTokenCache(a_process(server), wait_s=5, sleep=fake_sleep,
                            monotonic=lambda: clock[0])
    fetch = CountingFetch()
    with pytest.raises(errors.TokenUnavailable) as caught:
        cache.get(fetch, 1000.0, scope=SCOPE)
    assert caught.value.retryable and not caught.value.may_have_been_processed
    assert fetch.calls == 0
    assert slept[0] == pytest.approx(0.05)
    assert max(slept) == pytest.approx(0.5)
    assert sum(slept) == pytest.approx(5.0)


def test_twenty_processes_with_a_cold_cache_fetch_exactly_once(server):
    fetch = CountingFetch(delay=0.3)
    caches = [RedisTokenCache(a_process(server)) for _ in range(20)]
    start = threading.Barrier(20)
    tokens = []

    def worker(cache):
        start.wait()
        tokens.append(cache.get(fetch, time.time(), margin_s=120, scope=SCOPE))

    threads = [threading.Thread(target=worker, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert fetch.calls == 1
    assert tokens == ["token-1"] * 20


def test_the_memory_cache_fetches_once_for_many_threads():
    cache = MemoryTokenCache()
    fetch = CountingFetch(delay=0.1)
    threads = [threading.Thread(target=cache.get, args=(fetch, time.time())) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert fetch.calls == 1


def test_a_garbled_cached_value_is_replaced_by_a_fresh_token(server):
    redis = a_process(server)
    redis.set(f"topup:daraja:token:{SCOPE}", "<html>not json")
    assert RedisTokenCache(redis).get(CountingFetch(), 1000.0, scope=SCOPE) == "token-1"


class CountingGets:
    """A process's Redis client that counts its GETs."""

    def __init__(self, redis):
        self.redis, self.gets = redis, 0

    def get(self, key):
        self.gets += 1
        return self.redis.get(key)

    def __getattr__(self, name):
        return getattr(self.redis, name)


def test_a_process_reuses_the_token_it_read_for_a_few_seconds_without_asking_redis(server):
    clock = [100.0]
    redis = CountingGets(a_process(server))
    cache = RedisTokenCache(redis, local_s=5, monotonic=lambda: clock[0])
    fetch = CountingFetch()
    assert cache.get(fetch, 1000.0, scope=SCOPE) == "token-1"
    gets = redis.gets
    for _ in range(10):
        assert cache.get(fetch, 1000.0, scope=SCOPE) == "token-1"
    assert redis.gets == gets          # the local copy
    clock[0] += 5
    assert cache.get(fetch, 1005.0, scope=SCOPE) == "token-1"
    assert redis.gets == gets + 1      # read again once it is 5 s old
    assert fetch.calls == 1


def test_a_token_replaced_by_another_process_is_read_again_once_refused(server):
    fetch = CountingFetch()
    mine = RedisTokenCache(a_process(server), local_s=60)
    other = RedisTokenCache(a_process(server), local_s=60)
    assert mine.get(fetch, 1000.0, scope=SCOPE) == "token-1"
    assert other.invalidate("token-1", scope=SCOPE)
    assert other.get(fetch, 1000.0, scope=SCOPE) == "token-2"
    # Daraja refuses token-1: the client invalidates it (already gone) and asks again
    assert not mine.invalidate("token-1", scope=SCOPE)
    assert mine.get(fetch, 1000.0, scope=SCOPE) == "token-2"
    assert fetch.calls == 2


def test_a_local_copy_is_never_used_once_stale(server):
    fetch = CountingFetch(expires_in=100)
    cache = RedisTokenCache(a_process(server), local_s=3600)
    assert cache.get(fetch, 1000.0, scope=SCOPE) == "token-1"
    server_side = a_process(server)
    server_side.delete(cache.key_for(SCOPE))   # gone from Redis too
    assert cache.get(fetch, 1000.0 + 101, scope=SCOPE) == "token-2"
