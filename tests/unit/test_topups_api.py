"""POST /v1/topups and the reads, through the Flask app and the StubBroker."""
import json

import pytest

from ledger import db, pushes, settlement
from ledger.models import TopUp

pytestmark = pytest.mark.both_databases

GOOD = {"provider": "mpesa", "amount": 1000, "phone": "0712 345 678", "reference": "INV42",
        "metadata": {"order": "42"}}


def post(client, account, body, headers=None, raw=None, content_type="application/json"):
    data = raw if raw is not None else json.dumps(body)
    return client.post("/v1/topups", data=data, content_type=content_type,
                       headers={**account["auth"], **(headers or {})})


def pushes_queued(stub_broker):
    return stub_broker.queues["topups"].qsize()


def topup_rows():
    with db.connection():
        return TopUp.select().count()


def test_a_valid_request_answers_202_with_a_pending_topup_and_queues_one_push(client, account, stub_broker):
    response = post(client, account, GOOD)
    assert response.status_code == 202
    body = response.get_json()
    assert body["object"] == "topup" and body["status"] == "pending"
    assert body["id"].startswith("tu_")
    assert body["phone"] == "254712345678"
    assert body["amount"] == 1000 and body["currency"] == "KES"
    assert body["reference"] == "INV42" and body["metadata"] == {"order": "42"}
    assert body["checkout_request_id"] is None and body["mpesa_receipt"] is None
    assert pushes_queued(stub_broker) == 1


def test_the_reference_defaults_to_the_topups_short_id(client, account):
    body = post(client, account, {**GOOD, "reference": None}).get_json()
    assert body["reference"] == body["id"][3:15].upper()


@pytest.mark.parametrize("phone", ["0712345678", "712345678", "254712345678", "+254712345678",
                                   "+254 712-345-678", "0110 345 678", "110345678"])
def test_every_usual_form_of_a_kenyan_mobile_number_is_stored_as_254(client, account, phone):
    body = post(client, account, {**GOOD, "phone": phone}).get_json()
    assert body["phone"] in ("254712345678", "254110345678")


@pytest.mark.parametrize("field,value", [
    ("amount", 0), ("amount", -1), ("amount", 10.5), ("amount", "10"), ("amount", True),
    ("amount", 250001), ("amount", None),
    ("phone", "+15551234567"), ("phone", "0201234567"), ("phone", "12345"), ("phone", 712345678),
    ("reference", "ABCDEFGHIJKLM"), ("reference", "INV-42"), ("reference", ""),
    ("provider", "airtel"), ("metadata", ["x"]), ("metadata", {"k": 1}),
])
def test_bad_input_is_refused_with_problem_json_naming_the_field_and_pushes_nothing(
        client, account, stub_broker, field, value):
    response = post(client, account, {**GOOD, field: value})
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["code"] == "validation_failed" and problem["status"] == 422
    assert any(e["field"].split(".")[0] == field for e in problem["errors"])
    assert pushes_queued(stub_broker) == 0
    assert topup_rows() == 0


def test_a_missing_required_field_is_named(client, account):
    body = {k: v for k, v in GOOD.items() if k != "phone"}
    problem = post(client, account, body).get_json()
    assert [e["field"] for e in problem["errors"]] == ["phone"]


def test_an_unknown_field_is_refused_not_ignored(client, account):
    problem = post(client, account, {**GOOD, "amout": 5}).get_json()
    assert "amout" in [e["field"] for e in problem["errors"]]


@pytest.mark.parametrize("raw", ["{", "not json", "", "[1, 2]", "\"text\"", "\xff\xfe"])
def test_a_body_that_is_not_a_json_object_answers_400_invalid_json(client, account, stub_broker, raw):
    response = post(client, account, None, raw=raw)
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_json"
    assert pushes_queued(stub_broker) == 0


def test_a_form_encoded_body_answers_415(client, account):
    response = post(client, account, None, raw="amount=1", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.get_json()["code"] == "unsupported_media_type"


def test_a_huge_body_answers_413(client, account):
    response = post(client, account, None, raw='{"x": "' + "a" * 100_000 + '"}')
    assert response.status_code == 413
    assert response.get_json()["code"] == "payload_too_large"


@pytest.mark.parametrize("auth", [None, "Bearer", "Bearer sk_nope", "Basic abc", "sk_x"])
def test_a_request_without_a_valid_key_answers_401(client, auth):
    headers = {"Authorization": auth} if auth else {}
    response = client.get("/v1/topups", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthorized"


def test_the_same_idempotency_key_and_body_answer_the_same_topup_and_push_once(client, account, stub_broker):
    first = post(client, account, GOOD, headers={"Idempotency-Key": "order-42"})
    again = post(client, account, GOOD, headers={"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 202
    assert first.get_json()["id"] == again.get_json()["id"]
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert pushes_queued(stub_broker) == 1


def test_the_same_idempotency_key_with_another_body_answers_409(client, account):
    post(client, account, GOOD, headers={"Idempotency-Key": "order-42"})
    response = post(client, account, {**GOOD, "amount": 999}, headers={"Idempotency-Key": "order-42"})
    assert response.status_code == 409
    assert response.get_json()["code"] == "idempotency_conflict"


def test_an_account_cannot_see_another_accounts_topup(client, account, other_account):
    created = post(client, account, GOOD).get_json()
    response = client.get(f"/v1/topups/{created['id']}", headers=other_account["auth"])
    assert response.status_code == 404
    assert client.get(f"/v1/topups/{created['id']}", headers=account["auth"]).status_code == 200
    listed = client.get("/v1/topups", headers=other_account["auth"]).get_json()
    assert listed["data"] == []


def test_the_list_pages_newest_first(client, account):
    ids = [post(client, account, {**GOOD, "amount": n}).get_json()["id"] for n in range(1, 6)]
    page = client.get("/v1/topups?limit=2", headers=account["auth"]).get_json()
    assert [t["id"] for t in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = client.get(f"/v1/topups?limit=10&starting_after={ids[3]}", headers=account["auth"]).get_json()
    assert [t["id"] for t in rest["data"]] == ids[2::-1] and rest["has_more"] is False


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "status=paid",
                                   "starting_after=%00"])
def test_bad_list_parameters_answer_422(client, account, query):
    response = client.get(f"/v1/topups?{query}", headers=account["auth"])
    assert response.status_code == 422


def test_a_new_wallet_is_empty(client, account):
    wallet = client.get("/v1/wallet", headers=account["auth"]).get_json()
    assert wallet == {**wallet, "object": "wallet", "currency": "KES", "balance": "0.00",
                      "balance_cents": 0}
    entries = client.get("/v1/wallet/transactions", headers=account["auth"]).get_json()
    assert entries == {"object": "list", "data": [], "has_more": False}


def test_unknown_paths_and_methods_answer_problem_json(client, account):
    assert client.get("/v1/nothing", headers=account["auth"]).get_json()["code"] == "not_found"
    response = client.delete("/v1/topups", headers=account["auth"])
    assert response.status_code == 405 and response.mimetype == "application/problem+json"


def test_a_topup_credited_in_an_unusual_way_shows_why_it_is_flagged(client, account):
    created = post(client, account, GOOD).get_json()
    assert (created["channel"], created["flagged"]) == ("stk_push", None)
    with db.connection():
        pushes.claim_push(created["id"])
        pushes.record_push_accepted(created["id"], checkout_request_id="ws_CO_FLAG",
                                    merchant_request_id="m", query_after_s=60)
        assert settlement.settle_success("ws_CO_FLAG", amount_cents=50_000, receipt="QFLAG00001",
                                         phone=None, source="callback") == "credited"

    shown = client.get(f"/v1/topups/{created['id']}", headers=account["auth"]).get_json()
    assert shown["status"] == "succeeded"
    assert shown["flagged"] == "amount: requested 100000 cents, M-Pesa confirmed 50000"
