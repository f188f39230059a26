"""Events: written with the credit or the failure that made them true, listed by GET /v1/events."""
import pytest

from ledger import db, pushes, settlement, topups
from ledger.models import Event, TopUp, WebhookDelivery
from tests.messages import taken
from tests.unit.contract_support import (  # noqa: F401
    PHONE, credit, dev_app, dev_client, dev_settings, fail, post_json, pushed_topup, receipt,
)

pytestmark = pytest.mark.both_databases


def listed(client, account, query=""):
    response = client.get(f"/v1/events{query}", headers=account["auth"])
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def all_events():
    with db.connection():
        return list(Event.select().order_by(Event.seq))


def test_a_credit_publishes_one_wallet_top_up_event_with_the_topup_and_the_balance_after(
        dev_client, account):
    credit(account["id"], 20)
    topup_id = credit(account["id"], 15)

    page = listed(dev_client, account)

    assert [e["type"] for e in page["data"]] == ["wallet.top_up", "wallet.top_up"]
    event = page["data"][0]
    assert event["id"].startswith("evt_") and event["object"] == "event"
    assert event["data"]["topup"]["id"] == topup_id
    assert event["data"]["topup"]["status"] == "succeeded"
    assert event["data"]["topup"]["mpesa_receipt"]
    assert event["data"]["amount_cents"] == 1500
    assert (event["data"]["balance_cents"], event["data"]["balance"]) == (3500, "35.00")
    assert event["data"]["ledger_entry"].startswith("le_")


def test_a_failure_publishes_topup_failed_with_darajas_code(dev_client, account):
    topup_id = fail(account["id"])

    [event] = listed(dev_client, account)["data"]

    assert event["type"] == "topup.failed"
    assert event["data"]["topup"]["id"] == topup_id
    assert event["data"]["topup"]["status"] == "failed"
    assert event["data"]["topup"]["failure_code"] == "1032"


def test_the_same_callback_applied_again_publishes_nothing_more(database, account):
    topup_id, checkout = pushed_topup(account["id"], 10)
    paid = receipt()
    with db.connection():
        for _ in range(3):
            settlement.settle_success(checkout, amount_cents=1000, receipt=paid, phone=PHONE,
                                      source="callback")
        for _ in range(2):
            settlement.settle_failure(checkout, "1032", "cancelled", source="query")
    assert [e.type for e in all_events()] == ["wallet.top_up"]


def test_a_push_daraja_refuses_publishes_topup_failed(database, account):
    with db.connection():
        topup, _ = topups.create_topup(account["id"], amount=10, phone=PHONE, reference=None,
                                       metadata={})
        pushes.claim_push(topup.id)
        pushes.record_push_refused(topup.id, error_code="400.002.02",
                                   error_message="Invalid Amount")
    [event] = all_events()
    assert event.type == "topup.failed" and event.topup_id == topup.id


def test_giving_up_publishes_topup_failed_only_when_no_push_was_sent(database, account):
    import datetime as dt
    with db.connection():
        never_sent, _ = topups.create_topup(account["id"], amount=10, phone=PHONE,
                                            reference=None, metadata={})
    maybe_sent, _ = pushed_topup(account["id"], 10)
    later = TopUp.created_at.default() + dt.timedelta(days=2)
    with db.connection():
        assert settlement.give_up(never_sent.id, 3600, now=later) == "failed"
        assert settlement.give_up(maybe_sent, 3600, now=later) == "unknown"
    assert [(e.type, e.topup_id) for e in all_events()] == [("topup.failed", never_sent.id)]


def test_a_credit_that_rolls_back_leaves_no_event(database, account):
    """A receipt that already credited another top-up credits nothing, and says nothing."""
    first, first_checkout = pushed_topup(account["id"], 10)
    second, second_checkout = pushed_topup(account["id"], 10)
    with db.connection():
        settlement.settle_success(first_checkout, amount_cents=1000, receipt="QREPLAYED1",
                                  phone=PHONE, source="callback")
        outcome = settlement.settle_success(second_checkout, amount_cents=1000, receipt="QREPLAYED1",
                                            phone=PHONE, source="callback")
    assert outcome == "receipt_conflict"
    assert [e.topup_id for e in all_events()] == [first]


def test_events_are_listed_newest_first_in_pages_and_by_type(dev_client, account):
    credit(account["id"], 1)
    fail(account["id"])
    credit(account["id"], 2)

    first = listed(dev_client, account, "?limit=2")
    rest = listed(dev_client, account, f"?starting_after={first['data'][-1]['id']}")
    failures = listed(dev_client, account, "?type=topup.failed")

    assert [e["type"] for e in first["data"]] == ["wallet.top_up", "topup.failed"]
    assert first["has_more"] is True
    assert [e["type"] for e in rest["data"]] == ["wallet.top_up"] and rest["has_more"] is False
    assert [e["type"] for e in failures["data"]] == ["topup.failed"]


def test_one_event_can_be_read_by_its_id(dev_client, account):
    credit(account["id"], 1)
    [event] = listed(dev_client, account)["data"]
    one = dev_client.get(f"/v1/events/{event['id']}", headers=account["auth"])
    assert one.status_code == 200 and one.get_json() == event


@pytest.mark.parametrize("query,field", [("?type=wallet.debit", "type"), ("?limit=0", "limit"),
                                         ("?limit=x", "limit"),
                                         ("?starting_after=%00", "starting_after")])
def test_bad_list_parameters_are_refused_naming_them(dev_client, account, query, field):
    response = dev_client.get(f"/v1/events{query}", headers=account["auth"])
    assert response.status_code == 422
    assert [e["field"] for e in response.get_json()["errors"]] == [field]


def test_an_unknown_event_or_cursor_answers_404(dev_client, account):
    assert dev_client.get("/v1/events/evt_nope", headers=account["auth"]).status_code == 404
    assert dev_client.get("/v1/events?starting_after=evt_nope",
                          headers=account["auth"]).status_code == 404


def test_the_topup_in_a_wallet_top_up_event_is_the_one_the_api_answers_after_the_credit(
        dev_client, account):
    topup_id = credit(account["id"], 3)
    answered = dev_client.get(f"/v1/topups/{topup_id}", headers=account["auth"]).get_json()
    (event,) = listed(dev_client, account, "?type=wallet.top_up")["data"]
    assert answered["status"] == "succeeded" and answered["mpesa_receipt"]
    assert event["data"]["topup"] == answered


# --- deliveries are written with the event and announced after the commit ---------------------

def endpoint(client, account, types, url="http://127.0.0.1:9/hook"):
    response = post_json(client, "/v1/webhook_endpoints", {"url": url, "events": types},
                         account["auth"])
    assert response.status_code == 201
    return response.get_json()["id"]


def test_each_endpoint_that_asked_for_the_type_gets_one_delivery_queued_after_the_commit(
        dev_client, account, other_account, stub_broker):
    both = endpoint(dev_client, account, ["wallet.top_up", "topup.failed"])
    failures_only = endpoint(dev_client, account, ["topup.failed"])
    endpoint(dev_client, other_account, ["wallet.top_up"])

    credit(account["id"], 5)

    with db.connection():
        deliveries = list(WebhookDelivery.select())
    assert [d.endpoint_id for d in deliveries] == [both]
    assert failures_only not in [d.endpoint_id for d in deliveries]
    assert deliveries[0].status == "pending" and deliveries[0].attempts == 0
    assert [list(m.args) for m in taken(stub_broker, "webhooks")] == [[deliveries[0].id]]


def test_a_deleted_endpoint_gets_no_more_deliveries(dev_client, account):
    gone = endpoint(dev_client, account, ["wallet.top_up"])
    dev_client.delete(f"/v1/webhook_endpoints/{gone}", headers=account["auth"])
    credit(account["id"], 5)
    with db.connection():
        assert WebhookDelivery.select().count() == 0


def test_deliveries_survive_a_broker_that_is_down_for_the_sweep_to_find(
        dev_client, account, monkeypatch):
    from workers import webhooks as worker_webhooks
    endpoint(dev_client, account, ["wallet.top_up"])

    def broker_down(*args, **kwargs):
        raise ConnectionError("redis is down")
    monkeypatch.setattr(worker_webhooks.deliver_webhook, "send", broker_down)

    credit(account["id"], 5)  # commits; the announcement fails and is only logged

    import datetime as dt
    with db.connection():
        [delivery] = WebhookDelivery.select()
        later = delivery.created_at + dt.timedelta(minutes=2)
        assert worker_webhooks.due_deliveries(later) == [delivery.id]
        assert worker_webhooks.due_deliveries(later) == []  # not twice within the grace


@pytest.mark.parametrize("path", ["/v1/events", "/v1/webhook_endpoints", "/v1/topups",
                                  "/v1/wallet/transactions"])
@pytest.mark.parametrize("limit", ["²", "٣", "1e1", " 5", "-1", "101"])
def test_a_limit_that_is_not_plain_digits_from_1_to_100_is_refused_not_a_500(
        dev_client, account, path, limit):
    response = dev_client.get(path, query_string={"limit": limit}, headers=account["auth"])
    assert response.status_code == 422
    assert [e["field"] for e in response.get_json()["errors"]] == ["limit"]
