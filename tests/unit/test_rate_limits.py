"""Rate limits per API key on the write endpoints: 429 problem+json with Retry-After."""
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
