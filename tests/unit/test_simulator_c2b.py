"""The simulator's paybill (C2B): URLs registered, a customer's payment validated then
confirmed to them (ResponseType deciding when validation cannot be reached), Pull
Transactions over every payment it has seen, the statement with A/C No., an STK payment
reported as C2B too, and a confirmation dropped on purpose."""
from __future__ import annotations

import csv
import io
import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from simulator.server import SimulatorConfig, SimulatorServer
from tests.unit.test_simulator import Client
from tests.waiting import wait_until

EAT = timezone(timedelta(hours=3))
SHORTCODE = "174379"


class Gateway:
    """A stand-in for the gateway's two C2B URLs (and an STK callback URL): records what it
    is sent, answers validation with ``verdict``."""

    def __init__(self):
        self.received: list[tuple[str, dict]] = []
        self.verdict = "0"
        self._lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with gateway._lock:
                    gateway.received.append((self.path.split("/")[2], body))
                answer = json.dumps({"ResultCode": gateway.verdict if "validation" in self.path
                                     else 0, "ResultDesc": "x"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/daraja"

    def of(self, kind: str) -> list[dict]:
        """kind: "c2b" (validation and confirmation) or "callback"."""
        with self._lock:
            return [body for path, body in self.received if path == kind]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway():
    found = Gateway()
    yield found
    found.close()


@pytest.fixture
def sim():
    server = SimulatorServer(port=0, config=SimulatorConfig(callback_delay_s=0.05,
                                                            callback_timeout_s=2)).start()
    yield server
    server.stop()


@pytest.fixture
def daraja(sim, gateway):
    return Client(sim.url, f"{gateway.url}/callback/c0ffee")


def call(daraja, path, body, token=None):
    return daraja.http.post(f"{daraja.base}{path}", json=body,
                            headers={"Authorization": f"Bearer {token or daraja.token()}"})


def register(daraja, gateway, *, response_type="Completed", version="v2", validation=None):
    answer = call(daraja, f"/mpesa/c2b/{version}/registerurl", {
        "ShortCode": SHORTCODE, "ResponseType": response_type,
        "ConfirmationURL": f"{gateway.url}/c2b/confirmation/c0ffee",
        "ValidationURL": validation or f"{gateway.url}/c2b/validation/c0ffee"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def pay(sim, account="K7QM29", amount="100", phone="254712345678"):
    answer = requests.post(f"{sim.url}/__sim/c2b/pay", timeout=10,
                           json={"account_number": account, "amount": amount, "phone": phone})
    assert answer.status_code == 200, answer.text
    return answer.json()


def sim_post(sim, path, body):
    answer = requests.post(sim.url + path, json=body, timeout=10)
    answer.raise_for_status()
    return answer.json()


# --- registering ------------------------------------------------------------------------------

def test_registering_answers_as_daraja_does(daraja, gateway):
    assert register(daraja, gateway)["ResponseCode"] == "0"


@pytest.mark.parametrize("field,value,what", [
    ("ResponseType", "completed", "ResponseType"),
    ("ConfirmationURL", "https://pay.example.com/mpesa/confirm", "ConfirmationURL"),
    ("ValidationURL", "https://pay.example.com/c2b/validate query", "ValidationURL"),
    ("ShortCode", "12", "ShortCode")])
def test_a_registration_daraja_would_refuse_is_refused(daraja, field, value, what):
    body = {"ShortCode": SHORTCODE, "ResponseType": "Completed",
            "ConfirmationURL": "https://pay.example.com/c", "ValidationURL":
            "https://pay.example.com/v", field: value}
    answer = call(daraja, "/mpesa/c2b/v2/registerurl", body)
    assert answer.status_code == 400
    assert answer.json()["errorMessage"] == f"Bad Request - Invalid {what}"


def test_registering_without_a_valid_token_is_refused(daraja, gateway):
    answer = call(daraja, "/mpesa/c2b/v2/registerurl", {}, token="not-a-token")
    assert answer.json()["errorCode"] == "404.001.03"


# --- a customer pays --------------------------------------------------------------------------

def test_a_payment_is_validated_then_confirmed_with_strings_and_a_masked_phone(
        sim, daraja, gateway):
    register(daraja, gateway)
    paid = pay(sim, account="k7-qm29", amount="99.50")
    assert paid["status"] == "paid" and paid["validation"] == "0"
    validation, confirmation = gateway.of("c2b")
    assert validation == confirmation
    assert confirmation["TransID"] == paid["receipt"] and len(paid["receipt"]) == 10
    assert confirmation["TransAmount"] == "99.50" and confirmation["BillRefNumber"] == "k7-qm29"
    assert confirmation["MSISDN"] == "2547 ***** 678"
    assert confirmation["BusinessShortCode"] == SHORTCODE
    assert all(isinstance(value, str) for value in confirmation.values())


def test_a_v1_registration_gets_the_whole_phone(sim, daraja, gateway):
    register(daraja, gateway, version="v1")
    pay(sim)
    assert gateway.of("c2b")[-1]["MSISDN"] == "254712345678"


def test_a_payment_refused_at_validation_is_not_paid_nor_confirmed(sim, daraja, gateway):
    register(daraja, gateway)
    gateway.verdict = "C2B00012"
    paid = pay(sim)
    assert (paid["status"], paid["validation"]) == ("refused", "C2B00012")
    assert len(gateway.of("c2b")) == 1          # the validation only
    assert pulled(daraja) == [] and statement_rows(sim) == []


@pytest.mark.parametrize("response_type,status", [("Completed", "paid"),
                                                  ("Cancelled", "cancelled")])
def test_when_validation_cannot_be_reached_the_response_type_decides(
        sim, daraja, gateway, response_type, status):
    register(daraja, gateway, response_type=response_type,
             validation="http://127.0.0.1:9/c2b/validation/c0ffee")
    paid = pay(sim)
    assert (paid["status"], paid["validation"]) == (status, "unreachable")
    assert len(gateway.of("c2b")) == (1 if status == "paid" else 0)


def test_paying_an_unregistered_paybill_is_refused_with_what_to_do(sim):
    answer = requests.post(f"{sim.url}/__sim/c2b/pay", json={"account_number": "K7QM29",
                                                             "amount": 10}, timeout=5)
    assert answer.status_code == 400 and "register-urls" in answer.json()["error"]


def test_a_dropped_confirmation_is_paid_and_pulled_but_never_posted(sim, daraja, gateway):
    register(daraja, gateway)
    sim_post(sim, "/__sim/faults", {"fault": "drop_confirmation"})
    paid = pay(sim)
    assert (paid["status"], paid["last_confirmation"]) == ("paid", "dropped")
    assert len(gateway.of("c2b")) == 1
    assert [row["transactionId"] for row in pulled(daraja)] == [paid["receipt"]]
    assert pay(sim)["confirmations_delivered"] == 1     # the fault was used up


def test_a_duplicated_confirmation_is_posted_twice(sim, daraja, gateway):
    register(daraja, gateway)
    sim_post(sim, "/__sim/faults", {"fault": "duplicate_confirmation"})
    assert pay(sim)["confirmations_delivered"] == 2


def test_the_sandbox_simulate_endpoint_pays_after_answering(sim, daraja, gateway):
    register(daraja, gateway)
    answer = call(daraja, "/mpesa/c2b/v1/simulate", {
        "ShortCode": SHORTCODE, "CommandID": "CustomerPayBillOnline", "Amount": 10,
        "Msisdn": 254708374149, "BillRefNumber": "K7QM29"})
    assert answer.json()["ResponseCode"] == "0"
    wait_until(lambda: len(gateway.of("c2b")) == 2, message="validation and confirmation")


# --- an STK payment reported as C2B too -------------------------------------------------------

@pytest.mark.parametrize("when", ["before", "after"])
def test_a_paid_push_is_also_confirmed_as_c2b_when_switched_on(sim, daraja, gateway, when):
    register(daraja, gateway)
    sim_post(sim, "/__sim/config", {"c2b_echo_stk": when})
    accepted = daraja.push(amount=250, AccountReference="INV77").json()
    wait_until(lambda: gateway.of("callback") and gateway.of("c2b"),
               message="the STK callback and its C2B confirmation")
    [callback] = gateway.of("callback")
    [echo] = gateway.of("c2b")
    items = {i["Name"]: i.get("Value") for i in
             callback["Body"]["stkCallback"]["CallbackMetadata"]["Item"]}
    assert callback["Body"]["stkCallback"]["CheckoutRequestID"] == \
        accepted["CheckoutRequestID"]
    assert (echo["TransID"], echo["BillRefNumber"], echo["TransAmount"]) == (
        items["MpesaReceiptNumber"], "INV77", "250.00")


def test_without_the_switch_a_push_is_reported_by_its_callback_only(sim, daraja, gateway):
    register(daraja, gateway)
    daraja.push()
    wait_until(lambda: gateway.of("callback"), message="the STK callback")
    assert gateway.of("c2b") == []


# --- Pull Transactions and the statement ------------------------------------------------------

def pulled(daraja, *, offset=0, start=None, end=None) -> list[dict]:
    now = datetime.now(EAT)
    answer = call(daraja, "/pulltransactions/v1/query", {
        "ShortCode": SHORTCODE,
        "StartDate": (start or now - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S"),
        "EndDate": (end or now + timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S"),
        "OffSetValue": str(offset)}).json()
    if answer["ResponseCode"] == "1001":
        return []
    assert answer["ResponseCode"] == "1000"
    return [row for page in answer["Response"] for row in page]


def test_pull_pages_over_every_payment_it_has_seen_stk_included(sim, daraja, gateway):
    register(daraja, gateway)
    sim_post(sim, "/__sim/config", {"pull_page_size": 2})
    receipts = [pay(sim, amount=str(10 + i))["receipt"] for i in range(3)]
    daraja.push()
    wait_until(lambda: gateway.of("callback"), message="the STK callback")
    seen = []
    offset = 0
    while page := pulled(daraja, offset=offset):
        assert len(page) <= 2
        seen += page
        offset += len(page)
    assert len(seen) == 4 and set(receipts) < {row["transactionId"] for row in seen}
    first = seen[0]
    assert set(first) == {"transactionId", "trxDate", "msisdn", "sender", "transactiontype",
                          "billreference", "amount", "organizationname"}
    assert first["transactiontype"] == "c2b-pay-bill-debit"


def test_pull_keeps_to_the_window_asked(sim, daraja, gateway):
    register(daraja, gateway)
    pay(sim)
    long_ago = datetime.now(EAT) - timedelta(hours=5)
    assert pulled(daraja, start=long_ago, end=long_ago + timedelta(hours=1)) == []
    assert len(pulled(daraja)) == 1


def test_pull_registration_is_once(daraja):
    body = {"ShortCode": SHORTCODE, "RequestType": "Pull", "NominatedNumber": "254712345678",
            "CallBackURL": "https://pay.example.com/c2b"}
    assert call(daraja, "/pulltransactions/v1/register", body).json()["ResponseStatus"] == "1000"
    assert call(daraja, "/pulltransactions/v1/register", body).json()["ResponseStatus"] == "1001"


def statement_rows(sim) -> list[dict]:
    text = requests.get(f"{sim.url}/__sim/statement.csv", timeout=5).content.decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


def test_the_statement_shows_paybill_payments_with_their_account_number(sim, daraja, gateway):
    register(daraja, gateway)
    paid = pay(sim, account="k7-qm29", amount="1000.50")
    [row] = statement_rows(sim)
    assert (row["Receipt No."], row["A/C No."], row["Paid In"], row["Reason Type"]) == (
        paid["receipt"], "k7-qm29", "1,000.50", "Pay Bill")
    assert row["Other Party Info"].startswith("254712345678 - ")
