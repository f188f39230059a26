"""Webhook endpoints: a secret shown once, private addresses refused, idempotent creation."""
import base64
import dataclasses
import ipaddress

import pytest
import standardwebhooks

from ledger import db
from ledger.models import WebhookEndpoint
from tests.unit.contract_support import (  # noqa: F401
    dev_app, dev_client, dev_settings, make_app, post_json,
)

pytestmark = pytest.mark.both_databases

GOOD = {"url": "https://hooks.example.com/topup", "events": ["wallet.top_up", "topup.failed"]}


def create(client, account, body=GOOD, **headers):
    return post_json(client, "/v1/webhook_endpoints", body, account["auth"], **headers)


@pytest.fixture
def prod_client(settings, database, stub_broker):
    """WEBHOOK_ALLOW_PRIVATE=0, and DNS answers that we choose."""
    names = {"hooks.example.com": ["93.184.216.34"], "rebind.example.com": ["10.0.0.7"],
             "mixed.example.com": ["93.184.216.34", "127.0.0.1"],
             "metadata.example.com": ["169.254.169.254"], "v6.example.com": ["::1"],
             "v4-compatible.example.com": ["::127.0.0.1"],
             "localhost.": ["127.0.0.1"]}

    def resolver(host, port):
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        if host not in names:
            from workers.webhook_urls import UnsafeUrl
            raise UnsafeUrl(f"host {host!r} does not resolve")
        return [ipaddress.ip_address(a) for a in names[host]]

    settings = dataclasses.replace(settings, webhook_allow_private=False)
    return make_app(settings, stub_broker, WEBHOOK_RESOLVER=resolver).test_client()


def test_creating_an_endpoint_answers_201_with_a_standard_webhooks_secret(prod_client, account):
    response = create(prod_client, account)

    assert response.status_code == 201
    body = response.get_json()
    assert body["id"].startswith("we_") and body["object"] == "webhook_endpoint"
    assert body["url"] == GOOD["url"] and body["events"] == GOOD["events"]
    assert body["secret"].startswith("whsec_")
    assert len(base64.b64decode(body["secret"][len("whsec_"):])) == 32
    standardwebhooks.Webhook(body["secret"])  # the reference library accepts it


def test_the_secret_is_never_shown_again_in_listings_or_reads(prod_client, account):
    created = create(prod_client, account).get_json()

    listed = prod_client.get("/v1/webhook_endpoints", headers=account["auth"]).get_json()
    one = prod_client.get(f"/v1/webhook_endpoints/{created['id']}", headers=account["auth"])

    assert [e["id"] for e in listed["data"]] == [created["id"]]
    assert "secret" not in listed["data"][0]
    assert one.status_code == 200 and "secret" not in one.get_json()
    assert created["secret"] not in str(listed) + one.get_data(as_text=True)


def test_every_endpoint_gets_its_own_secret(prod_client, account):
    secrets = {create(prod_client, account).get_json()["secret"] for _ in range(3)}
    assert len(secrets) == 3


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://localhost.:8000/", "http://10.1.2.3/", "http://192.168.1.1/",
    "http://172.16.0.1/", "http://169.254.169.254/latest/meta-data", "http://[::1]/",
    "http://[fe80::1]/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/", "http://100.64.0.1/",
    "https://rebind.example.com/hook", "https://mixed.example.com/hook",
    "https://metadata.example.com/", "https://v6.example.com/",
    "http://[::127.0.0.1]/", "http://[::10.0.0.1]/", "http://[::169.254.169.254]/",
    "http://[::]/", "https://v4-compatible.example.com/",
])
def test_a_url_that_reaches_a_loopback_private_or_link_local_address_is_refused_with_422(
        prod_client, account, url):
    response = create(prod_client, account, {**GOOD, "url": url})
    assert response.status_code == 422, url
    problem = response.get_json()
    assert problem["code"] == "validation_failed"
    assert [e["field"] for e in problem["errors"]] == ["url"]


@pytest.mark.parametrize("url", [
    "ftp://hooks.example.com/", "file:///etc/passwd", "javascript:alert(1)", "hooks.example.com",
    "https://", "https://user:pw@hooks.example.com/", "https://hooks.example.com:99999/",
    "https://hooks.example.com/a b", "https://nowhere.invalid/", "", 42, None,
    "https://hooks.example.com/" + "x" * 2100,
])
def test_a_url_that_is_not_an_http_url_we_can_reach_is_refused_with_422(
        prod_client, account, url):
    response = create(prod_client, account, {**GOOD, "url": url})
    assert response.status_code == 422, url
    assert "url" in [e["field"] for e in response.get_json()["errors"]]


def test_private_addresses_are_allowed_when_webhook_allow_private_is_set(dev_client, account):
    response = create(dev_client, account, {**GOOD, "url": "http://127.0.0.1:9000/hook"})
    assert response.status_code == 201


@pytest.mark.parametrize("events", [[], ["wallet.top_up", "nope"], "wallet.top_up", None,
                                    [1], ["*"]])
def test_events_must_be_a_list_of_known_types(prod_client, account, events):
    response = create(prod_client, account, {**GOOD, "events": events})
    assert response.status_code == 422
    assert "events" in [e["field"] for e in response.get_json()["errors"]]


def test_unknown_fields_are_refused(prod_client, account):
    response = create(prod_client, account, {**GOOD, "enabled": True})
    assert response.status_code == 422
    assert "enabled" in [e["field"] for e in response.get_json()["errors"]]


def test_a_repeated_event_type_is_kept_once(prod_client, account):
    body = create(prod_client, account, {**GOOD, "events": ["topup.failed", "topup.failed"]})
    assert body.get_json()["events"] == ["topup.failed"]


def test_a_replay_with_the_same_key_answers_the_same_201_secret_included_and_creates_one(
        prod_client, account):
    first = create(prod_client, account, **{"Idempotency-Key": "hook-1"})
    again = create(prod_client, account, **{"Idempotency-Key": "hook-1"})

    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    with db.connection():
        assert WebhookEndpoint.select().count() == 1


def test_the_same_key_with_another_url_answers_409(prod_client, account):
    create(prod_client, account, **{"Idempotency-Key": "hook-2"})
    other = {**GOOD, "url": "https://hooks.example.com/other"}
    response = create(prod_client, account, other, **{"Idempotency-Key": "hook-2"})
    assert response.status_code == 409
    assert response.get_json()["code"] == "idempotency_conflict"


def test_one_key_on_two_endpoints_names_two_requests(prod_client, dev_client, account):
    """Keys are scoped to the account and the endpoint, so a debit's key does not collide."""
    assert create(prod_client, account, **{"Idempotency-Key": "shared"}).status_code == 201
    debit = post_json(prod_client, "/v1/wallet/debits", {"amount_cents": 5}, account["auth"],
                      **{"Idempotency-Key": "shared"})
    assert debit.status_code == 402


def test_deleting_an_endpoint_removes_it_from_the_list_and_a_second_delete_answers_404(
        prod_client, account):
    created = create(prod_client, account).get_json()

    deleted = prod_client.delete(f"/v1/webhook_endpoints/{created['id']}", headers=account["auth"])
    again = prod_client.delete(f"/v1/webhook_endpoints/{created['id']}", headers=account["auth"])

    assert deleted.status_code == 200
    assert deleted.get_json() == {"id": created["id"], "object": "webhook_endpoint",
                                  "deleted": True}
    assert again.status_code == 404
    listed = prod_client.get("/v1/webhook_endpoints", headers=account["auth"]).get_json()
    assert listed["data"] == []
    with db.connection():
        assert WebhookEndpoint.get(WebhookEndpoint.id == created["id"]).secret == ""


def test_endpoints_are_listed_newest_first_in_pages(prod_client, account):
    ids = [create(prod_client, account).get_json()["id"] for _ in range(5)]
    first = prod_client.get("/v1/webhook_endpoints?limit=2", headers=account["auth"]).get_json()
    after = first["data"][-1]["id"]
    rest = prod_client.get(f"/v1/webhook_endpoints?limit=10&starting_after={after}",
                           headers=account["auth"]).get_json()
    assert [e["id"] for e in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    assert [e["id"] for e in rest["data"]] == ids[::-1][2:] and rest["has_more"] is False
