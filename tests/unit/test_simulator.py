"""The Daraja simulator answers, calls back and fails the way Daraja does.

Each test starts its own simulator on a free port and a tiny callback receiver, and talks to
both over real HTTP.
"""
from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from simulator.server import SimulatorConfig, SimulatorServer
from tests.waiting import wait_until

EAT = timezone(timedelta(hours=3))
KEY, SECRET = "sim-consumer-key", "sim-consumer-secret"
SHORTCODE = "174379"
PASSKEY = "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919"
TEST_PHONE = "254708374149"
CALLBACK_SECRET = "c0ffee" * 6
DROP = object()  # a field left out of the request


class CallbackSink:
    """A stdlib HTTP server recording every callback POSTed to it."""

    def __init__(self):
        self.received: list[tuple[str, bytes]] = []
        self.status = 200
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else every answer waits 40 ms for an ACK

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink._lock:
                    sink.received.append((self.path, body))
                answer = b'{"ResultCode": 0, "ResultDesc": "Accepted"}'
                self.send_response(sink.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/daraja/callback/{CALLBACK_SECRET}"

    def bodies(self, checkout_request_id=None):
        with self._lock:
            raw = [body for _, body in self.received]
        found = [json.loads(body, parse_float=Decimal) for body in raw]
        if checkout_request_id is not None:
            found = [b for b in found
                     if b["Body"]["stkCallback"]["CheckoutRequestID"] == checkout_request_id]
        return found

    def raw(self):
        with self._lock:
            return [body for _, body in self.received]

    def wait_for(self, count, checkout_request_id=None, timeout=3.0):
        return wait_until(lambda: (found := self.bodies(checkout_request_id)) and
                          len(found) >= count and found,
                          timeout, message=f"{count} callback(s)")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def eat_now(offset_s=0):
    return (datetime.now(EAT) + timedelta(seconds=offset_s)).strftime("%Y%m%d%H%M%S")


def password(timestamp, shortcode=SHORTCODE):
    return base64.b64encode(f"{shortcode}{PASSKEY}{timestamp}".encode()).decode()


class Client:
    """Just enough of a Daraja client to drive the simulator."""

    def __init__(self, base_url, callback_url):
        self.base = base_url
        self.callback_url = callback_url
        self.http = requests.Session()
        self._token = None

    def oauth(self, key=KEY, secret=SECRET, grant_type="client_credentials", headers=None):
        return self.http.get(f"{self.base}/oauth/v1/generate",
                             params={"grant_type": grant_type} if grant_type else None,
                             headers=headers or {"Authorization": "Basic " + base64.b64encode(
                                 f"{key}:{secret}".encode()).decode()})

    def token(self):
        if self._token is None:
            answer = self.oauth()
            assert answer.status_code == 200, answer.text
            self._token = answer.json()["access_token"]
        return self._token

    def push_body(self, phone=TEST_PHONE, amount=1000, timestamp=None, **fields):
        timestamp = timestamp or eat_now()
        body = {"BusinessShortCode": SHORTCODE, "Password": password(timestamp),
                "Timestamp": timestamp, "TransactionType": "CustomerPayBillOnline",
                "Amount": amount, "PartyA": phone, "PartyB": SHORTCODE, "PhoneNumber": phone,
                "CallBackURL": self.callback_url, "AccountReference": "INV42",
                "TransactionDesc": "Top-up"}
        for name, value in fields.items():
            if value is DROP:
                body.pop(name, None)
            else:
                body[name] = value
        return body

    def push(self, phone=TEST_PHONE, amount=1000, token=None, timeout=10, **fields):
        return self.http.post(f"{self.base}/mpesa/stkpush/v1/processrequest",
                              json=self.push_body(phone, amount, **fields), timeout=timeout,
                              headers={"Authorization": f"Bearer {token or self.token()}"})

    def accepted(self, phone=TEST_PHONE, amount=1000, **fields):
        answer = self.push(phone, amount, **fields)
        assert answer.status_code == 200, answer.text
        return answer.json()["CheckoutRequestID"]

    def query(self, checkout_request_id, token=None, timestamp=None):
        timestamp = timestamp or eat_now()
        return self.http.post(
            f"{self.base}/mpesa/stkpushquery/v1/query",
            json={"BusinessShortCode": SHORTCODE, "Password": password(timestamp),
                  "Timestamp": timestamp, "CheckoutRequestID": checkout_request_id},
            headers={"Authorization": f"Bearer {token or self.token()}"})

    def control(self, method, name, body=None):
        answer = self.http.request(method, f"{self.base}/__sim/{name}", json=body)
        return answer

    def reset(self):
        """The simulator as it started, its tokens forgotten: this client's too."""
        answer = self.control("POST", "reset")
        assert answer.status_code == 200, answer.text
        self._token = None

    def configure(self, **settings):
        answer = self.control("POST", "config", settings)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def transaction(self, checkout_request_id):
        return self.control("GET", f"transactions/{checkout_request_id}").json()

    def transactions(self):
        return self.control("GET", "transactions").json()["data"]

    def stats(self):
        return self.control("GET", "stats").json()


@pytest.fixture
def sink():
    receiver = CallbackSink()
    yield receiver
    receiver.close()


@pytest.fixture
def sim():
    server = SimulatorServer(config=SimulatorConfig(callback_delay_s=0.05,
                                                    callback_timeout_s=2.0)).start()
    yield server
    server.stop()


@pytest.fixture
def daraja(sim, sink):
    return Client(sim.url, sink.url)


def assert_refused(answer, status, code, message):
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert (body["errorCode"], body["errorMessage"]) == (code, message)
    assert body["requestId"]


# --- OAuth ----------------------------------------------------------------------------------

def test_oauth_issues_a_28_character_token_whose_expires_in_is_a_string(daraja):
    answer = daraja.oauth()
    assert answer.status_code == 200
    body = answer.json()
    assert re.fullmatch(r"[A-Za-z0-9]{28}", body["access_token"])
    assert body["expires_in"] == "3599"


@pytest.mark.parametrize("key,secret", [(KEY, "wrong"), ("wrong", SECRET), ("", "")])
def test_oauth_with_bad_credentials_answers_400_with_an_empty_body(daraja, key, secret):
    answer = daraja.oauth(key, secret)
    assert answer.status_code == 400
    assert answer.content == b""
    assert answer.headers["Content-Length"] == "0"


def test_oauth_with_a_wrong_grant_type_answers_400_008_02(daraja):
    assert_refused(daraja.oauth(grant_type="password"), 400, "400.008.02",
                   "Invalid grant type passed")
    assert_refused(daraja.oauth(grant_type=None), 400, "400.008.02", "Invalid grant type passed")


def test_oauth_without_basic_authentication_answers_400_008_01(daraja):
    assert_refused(daraja.oauth(headers={"Authorization": "Bearer abc"}), 400, "400.008.01",
                   "Invalid Authentication passed")


def test_a_token_stops_working_after_its_lifetime(sink):
    with SimulatorServer(config=SimulatorConfig(token_ttl_s=0.5)) as short_lived:
        client = Client(short_lived.url, sink.url)
        assert client.oauth().json()["expires_in"] == "0.5"
        assert client.push().status_code == 200
        answers = []
        wait_until(lambda: answers.append(client.push("254711000001")) or
                   answers[-1].status_code == 404, message="the token to expire")
        assert_refused(answers[-1], 404, "404.001.03", "Invalid Access Token")


# --- STK push: validation -------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_a_push_without_a_valid_token_answers_404_invalid_access_token(daraja, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = daraja.http.post(f"{daraja.base}/mpesa/stkpush/v1/processrequest",
                              json=daraja.push_body(), headers=headers)
    assert_refused(answer, 404, "404.001.03", "Invalid Access Token")


@pytest.mark.parametrize("data,content_type", [
    ("BusinessShortCode=174379&Amount=1", "application/x-www-form-urlencoded"),
    ('{"BusinessShortCode": "174379"}', None),
    ("not json", "application/json"),
    ("[1, 2]", "application/json"),
])
def test_a_push_that_is_not_a_json_object_is_refused_as_an_invalid_shortcode(
        daraja, data, content_type):
    headers = {"Authorization": f"Bearer {daraja.token()}"}
    if content_type:
        headers["Content-Type"] = content_type
    answer = daraja.http.post(f"{daraja.base}/mpesa/stkpush/v1/processrequest", data=data,
                              headers=headers)
    assert_refused(answer, 400, "400.002.02", "Bad Request - Invalid BusinessShortCode")


def _invalid(what):
    return 400, "400.002.02", f"Bad Request - Invalid {what}"


WRONG_CREDENTIALS = (500, "500.001.1001", "Wrong credentials")


@pytest.mark.parametrize("fields,refusal", [
    ({"BusinessShortCode": "1234"}, _invalid("BusinessShortCode")),
    ({"BusinessShortCode": "17437a"}, _invalid("BusinessShortCode")),
    ({"BusinessShortCode": "600000"}, (500, "500.001.1001", "Merchant does not exist")),
    ({"Timestamp": "2026-11-28 10:00:00"}, _invalid("Timestamp")),
    ({"Timestamp": "20261399250000"}, _invalid("Timestamp")),
    ({"Password": "bm90IHRoZSBwYXNzd29yZA=="}, WRONG_CREDENTIALS),
    ({"Password": DROP}, WRONG_CREDENTIALS),
    ({"timestamp": eat_now(-3600)}, WRONG_CREDENTIALS),
    ({"TransactionType": "CustomerPayBill"}, _invalid("TransactionType")),
    ({"Amount": 10.5}, _invalid("Amount")),
    ({"Amount": "10.5"}, _invalid("Amount")),
    ({"Amount": 0}, _invalid("Amount")),
    ({"Amount": 250_001}, _invalid("Amount")),
    ({"Amount": True}, _invalid("Amount")),
    ({"Amount": DROP}, _invalid("Amount")),
    ({"PhoneNumber": "0712345678"}, _invalid("PhoneNumber")),
    ({"PhoneNumber": "+254712345678"}, _invalid("PhoneNumber")),
    ({"PhoneNumber": "25471234567"}, _invalid("PhoneNumber")),
    ({"PartyA": "254202345678"}, _invalid("PhoneNumber")),
    ({"PartyB": "till 42"}, _invalid("PartyB")),
    ({"CallBackURL": "ftp://pay.example.com/cb"}, _invalid("CallBackURL")),
    ({"CallBackURL": "pay.example.com/cb"}, _invalid("CallBackURL")),
    ({"CallBackURL": "https://pay.example.com/MPesa/cb"}, _invalid("CallBackURL")),
    ({"CallBackURL": "https://pay.example.com/cb?Query=1"}, _invalid("CallBackURL")),
    ({"CallBackURL": "https://pay.example.com/cmd/cb"}, _invalid("CallBackURL")),
    ({"CallBackURL": "https://safaricom.example.com/cb"}, _invalid("CallBackURL")),
    ({"CallBackURL": "https://pay.example.com/cb "}, _invalid("CallBackURL")),
    ({"AccountReference": ""}, _invalid("AccountReference")),
    ({"AccountReference": "A" * 13}, _invalid("AccountReference")),
    ({"TransactionDesc": DROP}, _invalid("Remarks")),
    ({"TransactionDesc": ""}, _invalid("Remarks")),
    ({"TransactionDesc": "D" * 14}, _invalid("Remarks")),
], ids=lambda value: None if isinstance(value, tuple) else json.dumps(
    {k: "<missing>" if v is DROP else v for k, v in value.items()}))
def test_a_push_breaking_a_daraja_rule_is_refused_with_daraja_words(daraja, fields, refusal):
    if "timestamp" in fields:  # a stale timestamp with a password that matches it
        answer = daraja.push(timestamp=fields["timestamp"])
    else:
        answer = daraja.push(**fields)
    assert_refused(answer, *refusal)
    assert daraja.transactions() == []


def test_a_password_built_with_a_utc_timestamp_is_refused_as_wrong_credentials(daraja):
    utc_stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    assert_refused(daraja.push(timestamp=utc_stamp), *WRONG_CREDENTIALS)


@pytest.mark.parametrize("fields", [
    {"Amount": "1"}, {"Amount": 250_000}, {"BusinessShortCode": 174379, "PartyB": 174379},
    {"PhoneNumber": 254112345678, "PartyA": 254112345678},
    {"TransactionType": "CustomerBuyGoodsOnline", "PartyB": "5087421"},
    {"AccountReference": "A" * 12, "TransactionDesc": "D" * 13},
])
def test_a_push_within_the_rules_is_accepted_in_every_form_daraja_takes(daraja, fields):
    assert daraja.push(**fields).status_code == 200


def test_https_callbacks_are_required_only_when_configured(sink):
    config = SimulatorConfig(require_https_callback=True)
    with SimulatorServer(config=config) as strict:
        client = Client(strict.url, sink.url)
        assert_refused(client.push(), *_invalid("CallBackURL"))
        assert client.push(CallBackURL="https://pay.example.com/cb/ab12").status_code == 200


# --- STK push: accepted, called back --------------------------------------------------------

def test_an_accepted_push_is_answered_then_called_back_with_daraja_shape(daraja, sink):
    answer = daraja.push(amount=1000)
    assert answer.status_code == 200
    body = answer.json()
    assert body["ResponseCode"] == "0"
    assert body["ResponseDescription"] == body["CustomerMessage"] == (
        "Success. Request accepted for processing")
    assert re.fullmatch(r"ws_CO_\d{22}", body["CheckoutRequestID"])
    assert re.fullmatch(r"[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\d+",
                        body["MerchantRequestID"])

    [callback] = sink.wait_for(1)
    assert sink.received[0][0] == f"/daraja/callback/{CALLBACK_SECRET}"
    stk = callback["Body"]["stkCallback"]
    assert stk["MerchantRequestID"] == body["MerchantRequestID"]
    assert stk["CheckoutRequestID"] == body["CheckoutRequestID"]
    assert stk["ResultCode"] == 0 and isinstance(stk["ResultCode"], int)
    assert stk["ResultDesc"] == "The service request is processed successfully."
    items = stk["CallbackMetadata"]["Item"]
    assert [item["Name"] for item in items] == [
        "Amount", "MpesaReceiptNumber", "Balance", "TransactionDate", "PhoneNumber"]
    assert items[2] == {"Name": "Balance"}
    values = {item["Name"]: item.get("Value") for item in items}
    assert values["Amount"] == 1000
    assert re.fullmatch(r"[A-Z][A-Z0-9]{9}", values["MpesaReceiptNumber"])
    assert values["PhoneNumber"] == 254708374149
    paid_at = datetime.strptime(str(values["TransactionDate"]), "%Y%m%d%H%M%S")
    assert abs(paid_at - datetime.now(EAT).replace(tzinfo=None)) < timedelta(minutes=1)

    record = daraja.transaction(body["CheckoutRequestID"])
    assert record["receipt"] == values["MpesaReceiptNumber"] and record["paid"] is True
    wait_until(lambda: daraja.transaction(body["CheckoutRequestID"])["callbacks_delivered"] == 1)


def test_receipts_are_unique_and_the_amount_alternates_between_1000_and_1000_00(daraja, sink):
    daraja.configure(lock_subscriber=False)
    for _ in range(6):
        daraja.accepted()
    callbacks = sink.wait_for(6)
    receipts = {c["Body"]["stkCallback"]["CallbackMetadata"]["Item"][1]["Value"]
                for c in callbacks}
    assert len(receipts) == 6
    raw = b"".join(sink.raw())
    assert raw.count(b'"Value": 1000}') == 3
    assert raw.count(b'"Value": 1000.00}') == 3


@pytest.mark.parametrize("phone,code,desc", [
    ("254700000000", 0, "The service request is processed successfully."),
    ("254700000001", 1, "The balance is insufficient for the transaction."),
    ("254700001032", 1032, "Request cancelled by user"),
    ("254700001037", 1037, "DS timeout user cannot be reached"),
    ("254700002001", 2001, "The initiator information is invalid."),
    ("254700000042", 42, None),
])
def test_a_magic_phone_chooses_the_result_code_of_callback_and_query(daraja, sink, phone,
                                                                     code, desc):
    checkout_id = daraja.accepted(phone)
    [callback] = sink.wait_for(1)
    stk = callback["Body"]["stkCallback"]
    assert stk["ResultCode"] == code
    if desc:
        assert stk["ResultDesc"] == desc
    assert ("CallbackMetadata" in stk) == (code == 0)
    query = daraja.query(checkout_id).json()
    assert query["ResultCode"] == str(code) and query["ResultDesc"] == stk["ResultDesc"]
    record = daraja.transaction(checkout_id)
    assert record["result_code"] == code and record["paid"] == (code == 0)
    assert (record["receipt"] is None) == (code != 0)


# --- STK query ------------------------------------------------------------------------------

def test_a_query_answers_4999_until_the_outcome_is_final_then_the_outcome(daraja, sink):
    daraja.configure(callback_delay_s=0.5)
    checkout_id = daraja.accepted("254700001032")
    pending = daraja.query(checkout_id)
    assert pending.status_code == 200
    assert pending.json() == {
        "ResponseCode": "0",
        "ResponseDescription": "The service request has been accepted successfully",
        "MerchantRequestID": daraja.transaction(checkout_id)["merchant_request_id"],
        "CheckoutRequestID": checkout_id,
        "ResultCode": "4999", "ResultDesc": "The transaction is still under processing"}
    final = wait_until(lambda: (q := daraja.query(checkout_id).json())["ResultCode"] != "4999"
                       and q, message="the final answer")
    assert (final["ResultCode"], final["ResultDesc"]) == ("1032", "Request cancelled by user")
    assert "MpesaReceiptNumber" not in json.dumps(final) and "Amount" not in final


def test_a_query_pending_phone_answers_4999_five_times_and_never_calls_back(daraja, sink):
    checkout_id = daraja.accepted("254700010010")
    wait_until(lambda: daraja.transaction(checkout_id)["final"])
    answers = [daraja.query(checkout_id).json()["ResultCode"] for _ in range(6)]
    assert answers == ["4999"] * 5 + ["0"]
    assert daraja.transaction(checkout_id)["callbacks_planned"] == 0
    assert sink.bodies(checkout_id) == []


def test_the_older_pending_form_is_an_http_500_the_transaction_is_being_processed(daraja):
    checkout_id = daraja.accepted("254700010011")
    wait_until(lambda: daraja.transaction(checkout_id)["final"])
    answers = [daraja.query(checkout_id) for _ in range(6)]
    for answer in answers[:5]:
        assert answer.status_code == 500
        assert answer.json() == {"requestId": checkout_id, "errorCode": "500.001.1001",
                                 "errorMessage": "The transaction is being processed"}
    assert answers[5].status_code == 200 and answers[5].json()["ResultCode"] == "0"


def test_query_pending_times_and_form_apply_to_ordinary_phones_when_configured(daraja):
    daraja.configure(query_pending_times=2, query_pending_form="500")
    checkout_id = daraja.accepted()
    wait_until(lambda: daraja.transaction(checkout_id)["final"])
    assert [daraja.query(checkout_id).status_code for _ in range(3)] == [500, 500, 200]


def test_a_query_for_an_unknown_checkout_request_id_answers_invalid_checkout_request_id(daraja):
    assert_refused(daraja.query("ws_CO_000000000000000000000"), *_invalid("CheckoutRequestID"))


def test_a_query_checks_the_token_and_the_password_like_a_push(daraja):
    checkout_id = daraja.accepted()
    assert_refused(daraja.query(checkout_id, token="stale"), 404, "404.001.03",
                   "Invalid Access Token")
    utc_stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    assert_refused(daraja.query(checkout_id, timestamp=utc_stamp), *WRONG_CREDENTIALS)


# --- refusals and the subscriber lock -------------------------------------------------------

@pytest.mark.parametrize("phone,status,code,message", [
    ("254700020001", 400, "400.002.02", "Bad Request - Invalid PhoneNumber"),
    ("254700020003", 500, "500.001.1001", "Merchant does not exist"),
    ("254700020005", 500, "500.001.1001",
     "Unable to lock subscriber, a transaction is already in process for the current subscriber"),
    ("254700020006", 500, "500.003.02", "System is busy. Please try again in few minutes."),
    ("254700020008", 500, "500.003.03", "Quota Violation"),
    ("254700020009", 404, "404.001.01", "Resource not found"),
    ("254700020010", 401, "401.003.01", "Invalid API call as no apiproduct match found"),
])
def test_a_refusal_phone_is_refused_outright_and_nothing_is_processed(
        daraja, sink, phone, status, code, message):
    assert_refused(daraja.push(phone), status, code, message)
    assert daraja.transactions() == []


def test_a_second_prompt_to_a_busy_phone_is_refused_unless_the_lock_is_switched_off(daraja):
    daraja.configure(callback_delay_s=2.0)
    daraja.accepted("254712345678")
    assert_refused(daraja.push("254712345678"), 500, "500.001.1001",
                   "Unable to lock subscriber, a transaction is already in process for the "
                   "current subscriber")
    assert daraja.push("254712345679").status_code == 200
    daraja.configure(lock_subscriber=False)
    assert daraja.push("254712345678").status_code == 200


def test_a_phone_is_free_again_once_its_transaction_is_final(daraja):
    checkout_id = daraja.accepted("254712345678")
    wait_until(lambda: daraja.transaction(checkout_id)["final"])
    assert daraja.push("254712345678").status_code == 200


# --- behaviours of the 25470001 phones ------------------------------------------------------

@pytest.mark.parametrize("phone,copies", [("254700010002", 2), ("254700010003", 5)])
def test_a_duplicating_phone_gets_the_same_callback_several_times(daraja, sink, phone, copies):
    checkout_id = daraja.accepted(phone)
    callbacks = sink.wait_for(copies)
    assert len({json.dumps(c, default=str) for c in callbacks}) == 1
    wait_until(lambda: daraja.transaction(checkout_id)["callbacks_delivered"] == copies)
    assert len(sink.bodies()) == copies


def test_a_no_callback_phone_is_never_called_back_but_its_outcome_is_queryable(daraja, sink):
    silent = daraja.accepted("254700010001")
    later = daraja.accepted()
    sink.wait_for(1, later)
    assert sink.bodies(silent) == []
    assert daraja.query(silent).json()["ResultCode"] == "0"


def test_a_late_callback_comes_long_after_the_outcome_is_queryable(daraja, sink):
    daraja.configure(callback_delay_s=0.02)
    checkout_id = daraja.accepted("254700010004")
    wait_until(lambda: daraja.query(checkout_id).json()["ResultCode"] == "0")
    assert sink.bodies(checkout_id) == []
    sink.wait_for(1, checkout_id, timeout=3)


def test_a_callback_before_answer_phone_is_called_back_before_its_push_is_answered(
        daraja, sink):
    checkout_id = daraja.accepted("254700010005")
    assert len(sink.bodies(checkout_id)) == 1  # already there: no waiting


def test_an_html_answer_phone_gets_an_html_page_yet_the_prompt_went_out(daraja, sink):
    answer = daraja.push("254700010006")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):
        answer.json()
    [record] = daraja.transactions()
    sink.wait_for(1, record["checkout_request_id"])


def test_a_gateway_fault_phone_gets_a_raw_fault_and_nothing_is_processed(daraja):
    answer = daraja.push("254700010007")
    assert answer.status_code == 500
    assert answer.json() == {"fault": {
        "faultstring": "Spike arrest violation. Allowed rate : 5ps",
        "detail": {"errorcode": "policies.ratelimit.SpikeArrestViolation"}}}
    assert daraja.transactions() == []


def test_a_slow_answer_phone_times_the_client_out_but_is_processed(daraja, sink):
    daraja.configure(slow_answer_s=1.0)
    with pytest.raises(requests.ReadTimeout):
        daraja.push("254700010008", timeout=0.3)
    [record] = daraja.transactions()
    sink.wait_for(1, record["checkout_request_id"])


def test_an_internal_error_phone_gets_500_003_1001_but_is_processed(daraja, sink):
    assert_refused(daraja.push("254700010009"), 500, "500.003.1001", "Internal Server Error")
    [record] = daraja.transactions()
    sink.wait_for(1, record["checkout_request_id"])


def test_an_amount_mismatch_phone_is_called_back_with_one_shilling_less(daraja, sink):
    checkout_id = daraja.accepted("254700010012", amount=500)
    [callback] = sink.wait_for(1, checkout_id)
    assert callback["Body"]["stkCallback"]["CallbackMetadata"]["Item"][0]["Value"] == 499
    assert daraja.transaction(checkout_id)["callback_amount"] == 499


# --- tokens, faults, rates, control ---------------------------------------------------------

def test_expire_tokens_makes_every_issued_token_answer_404_001_03(daraja):
    old = daraja.token()
    assert daraja.control("POST", "expire-tokens").json() == {"expired": 1}
    assert_refused(daraja.push(token=old), 404, "404.001.03", "Invalid Access Token")
    fresh = daraja.oauth().json()["access_token"]
    assert daraja.push(token=fresh).status_code == 200


def test_tokens_stay_valid_side_by_side_unless_a_new_token_revokes_the_old(daraja):
    first, second = (daraja.oauth().json()["access_token"] for _ in range(2))
    daraja.configure(lock_subscriber=False)
    assert daraja.push(token=first).status_code == 200
    daraja.configure(new_token_revokes_old=True)
    third = daraja.oauth().json()["access_token"]
    assert_refused(daraja.push(token=second), 404, "404.001.03", "Invalid Access Token")
    assert daraja.push(token=third).status_code == 200


def test_queued_refusals_fail_the_next_pushes_then_stop(daraja):
    queued = daraja.control("POST", "faults", {
        "fault": "refuse:500.003.02:System is busy. Please try again in few minutes.",
        "count": 2}).json()
    assert queued["data"][0]["remaining"] == 2
    daraja.configure(lock_subscriber=False)
    for _ in range(2):
        assert_refused(daraja.push(), 500, "500.003.02",
                       "System is busy. Please try again in few minutes.")
    assert daraja.push().status_code == 200
    assert daraja.control("GET", "faults").json() == {"data": []}


def test_a_queued_behaviour_is_recorded_on_the_transaction(daraja, sink):
    daraja.control("POST", "faults", {"fault": "no_callback"})
    checkout_id = daraja.accepted()
    record = daraja.transaction(checkout_id)
    assert record["behaviour"] == "no_callback" and record["callbacks_planned"] == 0
    assert record["decisions"]["source"] == "fault:no_callback"


def test_a_queued_behaviour_waits_for_a_push_that_gets_past_the_subscriber_lock(daraja):
    daraja.configure(callback_delay_s=2.0)
    daraja.accepted("254712345678")
    daraja.control("POST", "faults", {"fault": "no_callback"})
    assert daraja.push("254712345678").status_code == 500
    checkout_id = daraja.accepted("254712345679")
    assert daraja.transaction(checkout_id)["behaviour"] == "no_callback"


def test_a_queued_gateway_fault_is_answered_without_processing(daraja):
    daraja.control("POST", "faults", {"fault": "gateway_fault"})
    answer = daraja.push()
    assert answer.status_code == 500 and "fault" in answer.json()
    assert daraja.transactions() == []


def test_an_unknown_fault_is_refused_and_expire_token_early_expires_tokens(daraja):
    assert daraja.control("POST", "faults", {"fault": "meteor_strike"}).status_code == 400
    token = daraja.token()
    daraja.control("POST", "faults", {"fault": "expire_token_early"})
    assert_refused(daraja.push(token=token), 404, "404.001.03", "Invalid Access Token")


def _rate_run(daraja, seed):
    daraja.reset()
    daraja.configure(seed=seed, drop_callback_rate=0.3, duplicate_callback_rate=0.3,
                     lock_subscriber=False)
    ids = [daraja.accepted() for _ in range(20)]
    return ids, [daraja.transaction(i)["decisions"] for i in ids]


def test_drop_and_duplicate_rates_are_drawn_from_the_seed_and_honoured(daraja, sink):
    ids, decisions = _rate_run(daraja, seed=7)
    assert _rate_run(daraja, seed=7)[1] == decisions
    assert _rate_run(daraja, seed=8)[1] != decisions
    dropped = sum(d["drop"] for d in decisions)
    doubled = sum(d["duplicate"] for d in decisions)
    assert 0 < dropped < 20 and 0 < doubled < 20

    ids, decisions = _rate_run(daraja, seed=7)
    wait_until(lambda: daraja.stats()["callbacks_due"] == 0, message="every callback sent")
    for checkout_id, decision in zip(ids, decisions):
        expected = 0 if decision["drop"] else 2 if decision["duplicate"] else 1
        assert len(sink.bodies(checkout_id)) == expected
        assert daraja.transaction(checkout_id)["callbacks_delivered"] == expected


def test_failure_rate_turns_ordinary_successes_into_documented_failures(daraja, sink):
    daraja.configure(failure_rate=1.0, lock_subscriber=False, seed=1)
    codes = {daraja.transaction(daraja.accepted())["result_code"] for _ in range(12)}
    assert codes <= {1, 1032, 1037, 2001} and len(codes) > 1
    assert daraja.transaction(daraja.accepted("254700000000"))["result_code"] == 0


def test_a_failed_callback_delivery_is_recorded_and_logged_without_phone_or_secret(
        daraja, sink, caplog):
    caplog.set_level(logging.WARNING, logger="simulator")
    sink.status = 503
    checkout_id = daraja.accepted()
    wait_until(lambda: daraja.transaction(checkout_id)["callback_failures"] == 1)
    assert daraja.transaction(checkout_id)["last_callback"] == "503"
    assert daraja.stats()["callbacks_failed"] == 1 and daraja.stats()["callbacks_sent"] == 0
    wait_until(lambda: "failed" in caplog.text)
    assert "2547****4149" in caplog.text
    assert TEST_PHONE not in caplog.text and CALLBACK_SECRET not in caplog.text


def test_a_callback_to_an_unreachable_address_is_a_recorded_failure(daraja):
    daraja.callback_url = "http://127.0.0.1:9/daraja/callback/ab12"
    checkout_id = daraja.accepted()
    wait_until(lambda: daraja.transaction(checkout_id)["callback_failures"] == 1)
    assert daraja.transaction(checkout_id)["last_callback"] == "ConnectionError"


def test_stats_count_the_requests_received(daraja, sink):
    daraja.oauth(secret="wrong")
    checkout_id = daraja.accepted()
    daraja.query(checkout_id)
    daraja.query("ws_CO_unknown")
    sink.wait_for(1)
    stats = wait_until(lambda: (s := daraja.stats())["callbacks_sent"] == 1 and s)
    assert {k: stats[k] for k in ("oauth", "stkpush", "stkquery", "callbacks_sent",
                                  "callbacks_failed", "tokens_issued")} == {
        "oauth": 2, "stkpush": 1, "stkquery": 2, "callbacks_sent": 1, "callbacks_failed": 0,
        "tokens_issued": 1}


def test_reset_forgets_transactions_tokens_counters_faults_and_settings(daraja):
    token = daraja.token()
    daraja.accepted()
    daraja.configure(callback_delay_s=9.0)
    daraja.control("POST", "faults", {"fault": "gateway_fault"})
    assert daraja.control("POST", "reset").status_code == 200
    assert daraja.transactions() == []
    assert daraja.stats()["stkpush"] == 0
    assert daraja.control("GET", "faults").json() == {"data": []}
    assert daraja.control("GET", "config").json()["callback_delay_s"] == 0.05
    assert_refused(daraja.push(token=token), 404, "404.001.03", "Invalid Access Token")


def test_config_names_a_bad_setting_and_never_shows_secrets(daraja):
    answer = daraja.control("POST", "config", {"drop_callback_rate": 2})
    assert answer.status_code == 400 and "drop_callback_rate" in answer.json()["error"]
    assert daraja.control("POST", "config", {"passkey": "x"}).status_code == 400
    shown = daraja.configure(seed=3)
    assert shown["seed"] == 3 and "passkey" not in shown and "consumer_secret" not in shown


def test_an_unknown_checkout_request_id_is_404_on_the_control_endpoint(daraja):
    assert daraja.control("GET", "transactions/ws_CO_nope").status_code == 404


# --- HTTP -----------------------------------------------------------------------------------

def test_one_keep_alive_connection_carries_many_requests(sim):
    connection = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
    connection.request("GET", "/__sim/stats")
    connection.getresponse().read()
    sock = connection.sock
    for _ in range(3):
        connection.request("POST", "/mpesa/stkpush/v1/processrequest", body=b"{}",
                           headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        assert answer.status == 404 and int(answer.getheader("Content-Length")) > 0
        answer.read()
    assert connection.sock is sock
    connection.close()


def test_an_unknown_path_answers_resource_not_found(daraja):
    assert_refused(daraja.http.get(f"{daraja.base}/mpesa/b2c/v1/paymentrequest"), 404,
                   "404.001.01", "Resource not found")


def test_serve_prints_where_it_listens_and_stops_on_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-c", "from simulator.server import serve; serve(port=0)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        assert requests.get(f"{url}/__sim/stats", timeout=5).json()["stkpush"] == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- scripts by AccountReference, and the record of refusals ---------------------------------

def script(daraja, scripts):
    answer = daraja.control("POST", "scripts", {"scripts": scripts})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_scripted_reference_chooses_the_result_code_and_behaviour_whatever_the_phone(
        daraja, sink):
    assert script(daraja, {"SOAK1": {"result_code": 1032, "fault": "duplicate_callback"},
                           "SOAK2": {"fault": "no_callback"}}) == {"scripted": 2}
    daraja.configure(failure_rate=1.0)   # a script is not drawn from the rates
    failed = daraja.accepted("254712345678", AccountReference="SOAK1")
    silent = daraja.accepted("254700000001", AccountReference="SOAK2")   # a magic phone
    ordinary = daraja.accepted("254712345679", AccountReference="OTHER")

    callbacks = sink.wait_for(2, failed)
    assert {c["Body"]["stkCallback"]["ResultCode"] for c in callbacks} == {1032}
    record = daraja.transaction(failed)
    assert (record["result_code"], record["behaviour"], record["callbacks_planned"],
            record["decisions"]["source"]) == (1032, "duplicate_callback", 2, "script")
    assert daraja.query(silent).json()["ResultCode"] == "0"
    assert daraja.transaction(silent)["callbacks_planned"] == 0
    assert daraja.transaction(ordinary)["decisions"]["failure"] is True
    assert daraja.control("GET", "scripts").json()["data"]["SOAK2"] == {
        "result_code": 0, "fault": "no_callback"}


def test_a_scripted_refusal_refuses_every_push_of_its_reference_and_is_recorded(daraja):
    script(daraja, {"SOAK3": {"fault": "refuse:400.002.02:Bad Request - Invalid Amount"}})
    for _ in range(2):
        assert_refused(daraja.push(AccountReference="SOAK3"), 400, "400.002.02",
                       "Bad Request - Invalid Amount")
    assert daraja.transactions() == []
    refusals = daraja.control("GET", "refusals?account_reference=SOAK3").json()["data"]
    assert [(r["error_code"], r["source"], r["amount"]) for r in refusals] == [
        ("400.002.02", "script", 1000)] * 2


def test_refusals_record_every_push_answered_without_a_transaction_and_reset_forgets_them(
        daraja):
    daraja.configure(callback_delay_s=2.0)
    daraja.accepted("254712345678", AccountReference="FIRST")
    daraja.push("254712345678", AccountReference="SECOND")          # the subscriber lock
    daraja.push("254700020006", AccountReference="THIRD")           # a refusal phone
    daraja.control("POST", "faults", {"fault": "gateway_fault"})
    daraja.push(AccountReference="FOURTH")
    refusals = daraja.control("GET", "refusals").json()["data"]
    assert [(r["account_reference"], r["error_code"], r["source"]) for r in refusals] == [
        ("SECOND", "500.001.1001", "lock_subscriber"), ("THIRD", "500.003.02", "phone"),
        ("FOURTH", "gateway_fault", "fault:gateway_fault")]
    script(daraja, {"FIFTH": {}})
    daraja.control("POST", "reset")
    assert daraja.control("GET", "refusals").json()["data"] == []
    assert daraja.control("GET", "scripts").json()["data"] == {}


@pytest.mark.parametrize("scripts,complaint", [
    ({"TOO-LONG-REFERENCE": {}}, "1 to 12 characters"),
    ({"R": {"result_code": "0"}}, "result_code"),
    ({"R": {"result_code": True}}, "result_code"),
    ({"R": {"fault": "expire_token_early"}}, "unknown fault"),
    ({"R": {"colour": "red"}}, "only result_code and fault"),
    ([], "scripts must be an object"),
])
def test_a_bad_script_is_refused_by_name_and_adds_nothing(daraja, scripts, complaint):
    script(daraja, {"KEPT": {}})
    answer = daraja.control("POST", "scripts", {"scripts": {"NEW": {}, **scripts}}
                            if isinstance(scripts, dict) else {"scripts": scripts})
    assert answer.status_code == 400 and complaint in answer.json()["error"]
    assert list(daraja.control("GET", "scripts").json()["data"]) == ["KEPT"]
