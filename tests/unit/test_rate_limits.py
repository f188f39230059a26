"""Rate limits: writes per API key, failed authentications per client address; 429
problem+json with Retry-After."""
import dataclasses

import pytest

from tests.unit.contract_support import credit, dev_settings, make_app, post_json  # noqa: F401

LIMIT = "3 per minute"


@pytest.fixture
def limited(dev_settings, database, stub_broker):
    return make_app(dev_settings, stub_broker, RATELIMIT_WRITES=LIMIT).test_client()


def debit(client, account):
    return post_json(client, "/v1/wallet/debits", {"amount_cents": 1}, account["auth"])


def test_the_write_past_the_limit_answers_429_with_retry_after(limited, account):
    credit(account["id"], 1)
    answers = [debit(limited, account) for _ in range(4)]

    assert [a.status_code for a in answers] == [201, 201, 201, 429]
    refused = answers[-1]
    assert refused.mimetype == "application/problem+json"
    assert refused.get_json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    wallet = limited.get("/v1/wallet", headers=account["auth"]).get_json()
    assert wallet["balance_cents"] == 97  # the refused write did nothing


def test_each_api_key_has_its_own_count(limited, account, other_account):
    for _ in range(3):
        debit(limited, account)
    assert debit(limited, account).status_code == 429
    assert debit(limited, other_account).status_code == 402  # counted apart, then answered


def test_reads_are_not_limited(limited, account):
    for _ in range(3):
        debit(limited, account)
    for path in ("/v1/wallet", "/v1/events", "/v1/topups", "/v1/webhook_endpoints"):
        assert limited.get(path, headers=account["auth"]).status_code == 200


def test_every_write_endpoint_is_limited(limited, account):
    writes = [
        lambda: post_json(limited, "/v1/topups", {"provider": "mpesa", "amount": 10,
                                                  "phone": "0712345678"}, account["auth"]),
        lambda: post_json(limited, "/v1/webhook_endpoints",
                          {"url": "https://hooks.example.com/", "events": ["topup.failed"]},
                          account["auth"]),
        lambda: limited.delete("/v1/webhook_endpoints/we_nope", headers=account["auth"]),
        lambda: debit(limited, account),
    ]
    for write in writes:
        statuses = [write().status_code for _ in range(4)]
        assert statuses[-1] == 429 and 429 not in statuses[:3], statuses


def test_a_write_to_no_such_resource_is_a_404_however_often(limited, account):
    statuses = {post_json(limited, "/v1/nothing_here", {}, account["auth"]).status_code
                for _ in range(5)}
    assert statuses == {404}
    assert debit(limited, account).status_code == 402   # the debits' own count is untouched


def test_darajas_callbacks_are_never_limited(limited):
    for _ in range(5):
        assert limited.post("/daraja/callback/nope", data="{}").status_code == 404


def test_when_redis_is_down_writes_go_on_unlimited_rather_than_fail(
        dev_settings, database, stub_broker, account):
    down = make_app(dev_settings, stub_broker, RATELIMIT_WRITES=LIMIT,
                    RATELIMIT_STORAGE_URI="redis://127.0.0.1:9/0").test_client()
    credit(account["id"], 1)
    statuses = {debit(down, account).status_code for _ in range(3)}
    assert statuses == {201}


# --- failed authentications, per client address ---------------------------------------------

FAILURES = "3 per minute"
BAD_KEY = {"Authorization": "Bearer sk_" + "x" * 32}
GUESSER, NEIGHBOUR = "203.0.113.7", "198.51.100.20"


@pytest.fixture
def guarded(dev_settings, database, stub_broker):
    return make_app(dev_settings, stub_broker,
                    RATELIMIT_FAILED_AUTHENTICATIONS=FAILURES).test_client()


def wallet_from(client, address, auth, **headers):
    return client.get("/v1/wallet", headers={**auth, **headers},
                      environ_base={"REMOTE_ADDR": address})


def test_past_the_failed_authentications_an_address_gets_429_even_with_a_valid_key(
        guarded, account):
    failures = [wallet_from(guarded, GUESSER, BAD_KEY).status_code for _ in range(3)]
    refused = wallet_from(guarded, GUESSER, BAD_KEY)
    with_the_right_key = wallet_from(guarded, GUESSER, account["auth"])

    assert failures == [401, 401, 401]
    assert refused.status_code == 429
    assert refused.mimetype == "application/problem+json"
    problem = refused.get_json()
    assert problem["code"] == "rate_limited" and problem["title"] == "Too many requests"
    assert "failed authentications" in problem["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # the key is not looked up: a guess that is right cannot be told from a wrong one
    assert with_the_right_key.status_code == 429
    assert "balance_cents" not in with_the_right_key.get_data(as_text=True)


def test_failures_on_any_endpoint_add_up_and_then_every_endpoint_refuses(guarded, account):
    def from_guesser(method, path, auth, **kwargs):
        return guarded.open(path, method=method, headers=auth,
                            environ_base={"REMOTE_ADDR": GUESSER}, **kwargs)

    failures = [from_guesser("GET", "/v1/events", BAD_KEY),
                from_guesser("POST", "/v1/wallet/debits", BAD_KEY, json={"amount_cents": 1}),
                from_guesser("GET", "/v1/webhook_endpoints", {})]  # no key at all fails too
    assert [f.status_code for f in failures] == [401, 401, 401]

    afterwards = [from_guesser("GET", "/v1/topups", account["auth"]),
                  from_guesser("POST", "/v1/topups", account["auth"],
                               json={"provider": "mpesa", "amount": 10, "phone": "0712345678"}),
                  from_guesser("DELETE", "/v1/webhook_endpoints/we_nope", account["auth"])]
    assert [a.status_code for a in afterwards] == [429, 429, 429]
    assert guarded.get("/healthz", environ_base={"REMOTE_ADDR": GUESSER}).status_code == 200


def test_successful_authentications_are_not_counted(guarded, account):
    successes = [wallet_from(guarded, GUESSER, account["auth"]).status_code for _ in range(10)]
    failures = [wallet_from(guarded, GUESSER, BAD_KEY).status_code for _ in range(3)]

    assert successes == [200] * 10
    assert failures == [401, 401, 401]
    assert wallet_from(guarded, GUESSER, account["auth"]).status_code == 429


def test_other_addresses_are_not_affected(guarded, account):
    for _ in range(4):
        wallet_from(guarded, GUESSER, BAD_KEY)
    assert wallet_from(guarded, GUESSER, account["auth"]).status_code == 429

    assert wallet_from(guarded, NEIGHBOUR, account["auth"]).status_code == 200
    assert wallet_from(guarded, NEIGHBOUR, BAD_KEY).status_code == 401


def test_behind_trusted_proxies_each_forwarded_client_has_its_own_count(
        dev_settings, database, stub_broker, account):
    behind_one_proxy = dataclasses.replace(dev_settings, trusted_proxy_count=1)
    client = make_app(behind_one_proxy, stub_broker,
                      RATELIMIT_FAILED_AUTHENTICATIONS=FAILURES).test_client()
    proxy = "10.0.0.2"

    for _ in range(3):
        wallet_from(client, proxy, BAD_KEY, **{"X-Forwarded-For": GUESSER})

    assert wallet_from(client, proxy, account["auth"],
                       **{"X-Forwarded-For": GUESSER}).status_code == 429
    assert wallet_from(client, proxy, account["auth"],
                       **{"X-Forwarded-For": NEIGHBOUR}).status_code == 200
    # an address the client wrote into X-Forwarded-For itself, before our proxy's, is not believed
    assert wallet_from(client, proxy, account["auth"],
                       **{"X-Forwarded-For": f"{NEIGHBOUR}, {GUESSER}"}).status_code == 429


def test_when_redis_is_down_failed_authentications_are_still_counted_in_memory(
        dev_settings, database, stub_broker, account):
    down = make_app(dev_settings, stub_broker, RATELIMIT_FAILED_AUTHENTICATIONS=FAILURES,
                    RATELIMIT_STORAGE_URI="redis://127.0.0.1:9/0").test_client()

    statuses = [wallet_from(down, GUESSER, BAD_KEY).status_code for _ in range(4)]

    assert statuses == [401, 401, 401, 429]
    assert wallet_from(down, NEIGHBOUR, account["auth"]).status_code == 200


def test_while_redis_is_down_counts_are_kept_in_memory_and_redis_is_asked_again_later(
        monkeypatch):
    import limits
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter

    from app import ratelimit
    counts = ratelimit.Counts("redis://127.0.0.1:9/0",
                              {"socket_timeout": 0.5, "socket_connect_timeout": 0.5})
    two = limits.parse("2 per minute")
    assert [counts.hit(two, "me") for _ in range(3)] == [True, True, False]  # in memory

    counts.shared = FixedWindowRateLimiter(MemoryStorage())   # Redis is back
    assert counts.hit(two, "me") is False      # not asked again yet: still the memory's count
    later = ratelimit.time.monotonic() + ratelimit.REDIS_RETRY_S + 1
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: later)
    assert counts.hit(two, "me") is True       # asked again: Redis's own count
    assert counts.shared.get_window_stats(two, "me").remaining == 1
