"""An account sees only its own objects: another account's ids answer 404, every time."""
import pytest

from ledger import accounts, db
from tests.unit.contract_support import (  # noqa: F401
    credit, dev_app, dev_client, dev_settings, fail, post_json,
)

pytestmark = pytest.mark.both_databases


@pytest.fixture
def a_objects(dev_client, account):
    """Account A with one of everything: top-ups, ledger entries, an endpoint, events."""
    auth = account["auth"]
    credit(account["id"], 30)
    fail(account["id"])
    endpoint = post_json(dev_client, "/v1/webhook_endpoints",
                         {"url": "https://hooks.example.com/a", "events": ["wallet.top_up"]},
                         auth).get_json()
    debit = post_json(dev_client, "/v1/wallet/debits", {"amount_cents": 500}, auth,
                      **{"Idempotency-Key": "a-debit"}).get_json()
    return {
        "topups": [t["id"] for t in dev_client.get("/v1/topups", headers=auth).get_json()["data"]],
        "entries": [e["id"] for e in
                    dev_client.get("/v1/wallet/transactions", headers=auth).get_json()["data"]],
        "endpoint": endpoint["id"],
        "events": [e["id"] for e in dev_client.get("/v1/events", headers=auth).get_json()["data"]],
        "debit": debit,
    }


def test_account_b_reading_a_topups_events_and_endpoints_by_id_gets_404_every_time(
        dev_client, other_account, a_objects):
    b = other_account["auth"]
    paths = ([f"/v1/topups/{i}" for i in a_objects["topups"]]
             + [f"/v1/events/{i}" for i in a_objects["events"]]
             + [f"/v1/webhook_endpoints/{a_objects['endpoint']}"])
    assert len(paths) == 2 + 2 + 1
    for path in paths:
        response = dev_client.get(path, headers=b)
        assert (response.status_code, response.get_json()["code"]) == (404, "not_found"), path


def test_account_b_paging_from_a_ids_gets_404_every_time(dev_client, other_account, a_objects):
    b = other_account["auth"]
    pages = ([f"/v1/topups?starting_after={i}" for i in a_objects["topups"]]
             + [f"/v1/wallet/transactions?starting_after={i}" for i in a_objects["entries"]]
             + [f"/v1/events?starting_after={i}" for i in a_objects["events"]]
             + [f"/v1/webhook_endpoints?starting_after={a_objects['endpoint']}"])
    for path in pages:
        assert dev_client.get(path, headers=b).status_code == 404, path


def test_account_b_deleting_a_endpoint_gets_404_and_it_keeps_working(
        dev_client, account, other_account, a_objects):
    path = f"/v1/webhook_endpoints/{a_objects['endpoint']}"
    assert dev_client.delete(path, headers=other_account["auth"]).status_code == 404
    assert dev_client.get(path, headers=account["auth"]).status_code == 200


def test_account_b_lists_none_of_a_objects(dev_client, other_account, a_objects):
    b = other_account["auth"]
    for path in ("/v1/topups", "/v1/wallet/transactions", "/v1/events", "/v1/webhook_endpoints"):
        assert dev_client.get(path, headers=b).get_json()["data"] == [], path
    assert dev_client.get("/v1/wallet", headers=b).get_json()["balance_cents"] == 0


def test_account_b_debiting_with_a_idempotency_key_gets_its_own_answer_not_a_debit(
        dev_client, account, other_account, a_objects):
    response = post_json(dev_client, "/v1/wallet/debits", {"amount_cents": 500},
                         other_account["auth"], **{"Idempotency-Key": "a-debit"})

    assert response.status_code == 402  # B's own empty wallet, not A's stored 201
    assert "Idempotent-Replayed" not in response.headers
    a_wallet = dev_client.get("/v1/wallet", headers=account["auth"]).get_json()
    assert a_wallet["balance_cents"] == 2500


def test_a_debit_takes_only_from_the_callers_wallet(dev_client, account, other_account):
    credit(account["id"], 10)
    credit(other_account["id"], 10)
    post_json(dev_client, "/v1/wallet/debits", {"amount_cents": 300}, other_account["auth"])
    assert dev_client.get("/v1/wallet", headers=account["auth"]).get_json()["balance_cents"] == 1000


@pytest.mark.parametrize("method,path", [
    ("get", "/v1/events"), ("get", "/v1/events/evt_x"), ("get", "/v1/webhook_endpoints"),
    ("post", "/v1/webhook_endpoints"), ("delete", "/v1/webhook_endpoints/we_x"),
    ("post", "/v1/wallet/debits"),
])
def test_without_a_valid_key_every_new_endpoint_answers_401(dev_client, method, path):
    for headers in ({}, {"Authorization": "Bearer sk_nope"}, {"Authorization": "Basic x"}):
        response = getattr(dev_client, method)(path, headers=headers, json={})
        assert response.status_code == 401
        assert response.mimetype == "application/problem+json"


def test_a_revoked_key_answers_401(dev_client, account):
    with db.connection():
        [key] = accounts.list_api_keys(account["id"])
        assert accounts.revoke_api_key(key.id)
    assert dev_client.get("/v1/events", headers=account["auth"]).status_code == 401


@pytest.mark.parametrize("path", ["/v1/events/evt_x%00", "/v1/topups/tu_%00",
                                  "/v1/webhook_endpoints/we_%00", "/v1/events/" + "e" * 300,
                                  "/v1/topups/TU_ABC", "/v1/events/evt_%F0%9F%92%B8"])
def test_anything_that_cannot_be_an_id_answers_404_without_reaching_the_database(
        dev_client, account, path):
    assert dev_client.get(path, headers=account["auth"]).status_code == 404
    if "webhook_endpoints" in path:
        assert dev_client.delete(path, headers=account["auth"]).status_code == 404
