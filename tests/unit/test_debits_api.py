"""POST /v1/wallet/debits: spending in cents, never below zero, idempotent with a key."""
import threading

import pytest

from ledger import db
from ledger.models import LedgerEntry, Wallet
from tests.unit.contract_support import (  # noqa: F401
    credit, dev_app, dev_client, dev_settings, post_json,
)

pytestmark = pytest.mark.both_databases


def debit(client, account, body, **headers):
    return post_json(client, "/v1/wallet/debits", body, account["auth"], **headers)


def balance(client, account):
    return client.get("/v1/wallet", headers=account["auth"]).get_json()["balance_cents"]


def entries(account_id):
    with db.connection():
        wallet = Wallet.get(Wallet.account == account_id)
        return LedgerEntry.select().where(LedgerEntry.wallet == wallet.id).count()


def test_a_debit_answers_201_with_a_negative_ledger_entry_and_lowers_the_balance(
        dev_client, account):
    credit(account["id"], 20)

    response = debit(dev_client, account, {"amount_cents": 310, "description": "call CA19 62s"})

    assert response.status_code == 201
    entry = response.get_json()
    assert entry["id"].startswith("le_") and entry["object"] == "ledger_entry"
    assert (entry["type"], entry["amount_cents"], entry["balance_after_cents"]) == (
        "debit", -310, 1690)
    assert entry["description"] == "call CA19 62s"
    assert entry["topup"] is None and entry["mpesa_receipt"] is None
    assert balance(dev_client, account) == 1690
    listed = dev_client.get("/v1/wallet/transactions", headers=account["auth"]).get_json()["data"]
    assert [(e["type"], e["amount_cents"]) for e in listed] == [("debit", -310), ("top_up", 2000)]


def test_a_debit_larger_than_the_balance_answers_402_and_takes_nothing(dev_client, account):
    credit(account["id"], 1)

    response = debit(dev_client, account, {"amount_cents": 101, "description": "too much"})

    assert response.status_code == 402
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "insufficient_funds"
    assert balance(dev_client, account) == 100
    assert entries(account["id"]) == 1


def test_a_debit_of_exactly_the_balance_leaves_zero(dev_client, account):
    credit(account["id"], 1)
    assert debit(dev_client, account, {"amount_cents": 100}).status_code == 201
    assert balance(dev_client, account) == 0
    assert debit(dev_client, account, {"amount_cents": 1}).status_code == 402


@pytest.mark.parametrize("body,field", [
    ({"amount_cents": 0}, "amount_cents"), ({"amount_cents": -5}, "amount_cents"),
    ({"amount_cents": 1.5}, "amount_cents"), ({"amount_cents": "100"}, "amount_cents"),
    ({"amount_cents": True}, "amount_cents"), ({}, "amount_cents"),
    ({"amount_cents": 10 ** 30}, "amount_cents"),
    ({"amount_cents": 5, "description": 7}, "description"),
    ({"amount_cents": 5, "description": "x" * 256}, "description"),
    ({"amount_cents": 5, "amout": 5}, "amout"),
])
def test_a_malformed_debit_is_refused_naming_the_field_and_takes_nothing(
        dev_client, account, body, field):
    credit(account["id"], 10)
    response = debit(dev_client, account, body)
    assert response.status_code == 422
    assert field in [e["field"] for e in response.get_json()["errors"]]
    assert balance(dev_client, account) == 1000


def test_a_debit_that_is_not_json_is_refused_with_415_or_400(dev_client, account):
    headers = account["auth"]
    as_text = dev_client.post("/v1/wallet/debits", data="amount_cents=5",
                              content_type="text/plain", headers=headers)
    broken = dev_client.post("/v1/wallet/debits", data="{", content_type="application/json",
                             headers=headers)
    assert (as_text.status_code, as_text.get_json()["code"]) == (415, "unsupported_media_type")
    assert (broken.status_code, broken.get_json()["code"]) == (400, "invalid_json")


def test_a_debit_body_over_64_kib_answers_413(dev_client, account):
    response = debit(dev_client, account, {"amount_cents": 5, "description": "x" * 70_000})
    assert response.status_code == 413
    assert response.get_json()["code"] == "payload_too_large"


def test_the_same_key_and_body_answer_the_first_debit_again_and_take_the_money_once(
        dev_client, account):
    credit(account["id"], 10)
    body = {"amount_cents": 250, "description": "sms bundle"}

    first = debit(dev_client, account, body, **{"Idempotency-Key": "order-77"})
    again = debit(dev_client, account, body, **{"Idempotency-Key": "order-77"})

    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert balance(dev_client, account) == 750
    assert entries(account["id"]) == 2  # the top-up and one debit


def test_the_same_key_with_another_body_answers_409_and_takes_nothing_more(dev_client, account):
    credit(account["id"], 10)
    debit(dev_client, account, {"amount_cents": 250}, **{"Idempotency-Key": "k1"})

    response = debit(dev_client, account, {"amount_cents": 260}, **{"Idempotency-Key": "k1"})

    assert response.status_code == 409
    assert response.get_json()["code"] == "idempotency_conflict"
    assert balance(dev_client, account) == 750


def test_a_402_is_the_answer_for_its_key_even_after_the_wallet_is_funded(dev_client, account):
    """As with Stripe: the key names that request and its outcome; a new attempt needs a new key."""
    first = debit(dev_client, account, {"amount_cents": 500}, **{"Idempotency-Key": "k402"})
    credit(account["id"], 10)
    again = debit(dev_client, account, {"amount_cents": 500}, **{"Idempotency-Key": "k402"})
    fresh = debit(dev_client, account, {"amount_cents": 500}, **{"Idempotency-Key": "k402-b"})

    assert (first.status_code, again.status_code, fresh.status_code) == (402, 402, 201)
    assert again.get_json() == first.get_json()
    assert again.mimetype == "application/problem+json"
    assert balance(dev_client, account) == 500


def test_a_refused_request_stores_nothing_so_its_key_can_be_used_once_corrected(
        dev_client, account):
    credit(account["id"], 10)
    bad = debit(dev_client, account, {"amount_cents": "5"}, **{"Idempotency-Key": "fixme"})
    good = debit(dev_client, account, {"amount_cents": 5}, **{"Idempotency-Key": "fixme"})
    assert (bad.status_code, good.status_code) == (422, 201)


def test_twenty_debits_racing_with_one_key_take_the_money_once(dev_app, account):
    credit(account["id"], 10)
    answers = []

    def send():
        client = dev_app.test_client()
        answers.append(debit(client, account, {"amount_cents": 100},
                             **{"Idempotency-Key": "race"}))

    threads = [threading.Thread(target=send) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert [a.status_code for a in answers] == [201] * 20
    assert len({a.get_json()["id"] for a in answers}) == 1
    assert balance(dev_app.test_client(), account) == 900


def test_thirty_debits_racing_against_a_small_wallet_never_take_it_below_zero(dev_app, account):
    credit(account["id"], 10)  # 1,000 cents: room for 10 debits of 100
    answers = []

    def send():
        answers.append(debit(dev_app.test_client(), account, {"amount_cents": 100}).status_code)

    threads = [threading.Thread(target=send) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert sorted(answers) == [201] * 10 + [402] * 20
    assert balance(dev_app.test_client(), account) == 0


@pytest.mark.parametrize("path", ["/v1/wallet/debits", "/v1/webhook_endpoints", "/v1/topups"])
@pytest.mark.parametrize("raw", [
    "[" * 5_000 + "]" * 5_000,                                    # nested past the parser's stack
    '{"amount_cents": 5, "description": "\\ud800"}',              # a lone surrogate: not text
    '{"url": "https://ex\\udfffample.com/", "events": ["topup.failed"]}',
])
def test_json_that_is_not_storable_text_answers_400_not_500(dev_client, account, path, raw):
    response = dev_client.post(path, data=raw, content_type="application/json",
                               headers=account["auth"])
    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_json")


@pytest.mark.parametrize("raw", ['{"amount_cents": 5, "description": "a\\u0000b"}',
                                 '{"amount_cents": 5, "description": "\\\\\\u0000"}'])
def test_a_nul_character_anywhere_in_the_body_answers_400(dev_client, account, raw):
    credit(account["id"], 1)
    response = dev_client.post("/v1/wallet/debits", data=raw, content_type="application/json",
                               headers=account["auth"])
    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_json")
    assert balance(dev_client, account) == 100


def test_a_backslash_u_0000_written_as_text_is_only_text(dev_client, account):
    credit(account["id"], 1)
    raw = '{"amount_cents": 5, "description": "\\\\u0000"}'  # the six characters \u0000
    response = dev_client.post("/v1/wallet/debits", data=raw, content_type="application/json",
                               headers=account["auth"])
    assert response.status_code == 201
    assert response.get_json()["description"] == "\\u0000"
