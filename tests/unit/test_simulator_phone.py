"""The simulator's phone (``GET /phone``): with ``unclaimed_phones`` ``"wait"``, a prompt to a
phone no magic number claims waits for a person, who pays it with a PIN, cancels it, types a
wrong PIN, lets it time out or has too little money; the callback and STK Query follow what
they did. Magic numbers and the sandbox's test phone keep their own behaviour."""
from __future__ import annotations

import re

import pytest
import requests

from simulator.server import SimulatorConfig, SimulatorServer
from tests.unit.test_simulator import TEST_PHONE, CallbackSink, Client, sink  # noqa: F401
from tests.waiting import wait_until

PERSON = "254712345678"


@pytest.fixture
def sim():
    server = SimulatorServer(config=SimulatorConfig(
        callback_delay_s=0.05, callback_timeout_s=2.0, unclaimed_phones="wait",
        prompt_timeout_s=30)).start()
    yield server
    server.stop()


@pytest.fixture
def daraja(sim, sink):  # noqa: F811
    return Client(sim.url, sink.url)


def answer(sim, checkout, action, pin=None, origin=None):
    form = {"action": action, **({"pin": pin} if pin is not None else {})}
    return requests.post(f"{sim.url}/phone/prompts/{checkout}", data=form, timeout=5,
                         allow_redirects=False,
                         headers={"Origin": origin or sim.url})


def test_a_prompt_waits_on_the_phone_page_until_a_person_pays_it(sim, daraja, sink):  # noqa: F811
    checkout = daraja.accepted(PERSON, amount=1000)
    page = requests.get(f"{sim.url}/phone", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert PERSON in page.text and "KES 1,000" in page.text and checkout in page.text
    assert re.search(r'<meta http-equiv="refresh" content="\d+">', page.text)
    assert daraja.query(checkout).json()["ResultCode"] == "4999"   # still on the phone
    assert sink.bodies(checkout) == []

    assert answer(sim, checkout, "pay", pin="12a4").status_code == 422   # not a PIN
    done = answer(sim, checkout, "pay", pin="1234")
    assert done.status_code == 303 and done.headers["Location"].startswith("/phone")
    [body] = sink.wait_for(1, checkout)
    callback = body["Body"]["stkCallback"]
    assert callback["ResultCode"] == 0
    items = {i["Name"]: i.get("Value") for i in callback["CallbackMetadata"]["Item"]}
    assert re.fullmatch(r"[A-Z0-9]{10}", items["MpesaReceiptNumber"])
    assert daraja.query(checkout).json()["ResultCode"] == "0"
    page = requests.get(f"{sim.url}/phone", timeout=5).text
    assert items["MpesaReceiptNumber"] in page and "Do you want to pay" not in page
    # answered once: a second answer changes nothing
    assert answer(sim, checkout, "cancel").status_code == 409


@pytest.mark.parametrize("action, code", [("cancel", 1032), ("wrong_pin", 2001),
                                          ("timeout", 1037), ("no_money", 1)])
def test_each_answer_gives_darajas_result_code(sim, daraja, sink, action, code):  # noqa: F811
    checkout = daraja.accepted(PERSON)
    assert answer(sim, checkout, action).status_code == 303
    [body] = sink.wait_for(1, checkout)
    assert body["Body"]["stkCallback"]["ResultCode"] == code
    assert "CallbackMetadata" not in body["Body"]["stkCallback"]


def test_a_prompt_nobody_answers_times_out_with_1037(sink):  # noqa: F811
    server = SimulatorServer(config=SimulatorConfig(
        callback_delay_s=0.05, unclaimed_phones="wait", prompt_timeout_s=0.3)).start()
    try:
        checkout = Client(server.url, sink.url).accepted(PERSON)
        [body] = sink.wait_for(1, checkout, timeout=5)
        assert body["Body"]["stkCallback"]["ResultCode"] == 1037
    finally:
        server.stop()


def test_the_test_phone_and_magic_numbers_do_not_wait(sim, daraja, sink):  # noqa: F811
    paid = daraja.accepted(TEST_PHONE)
    cancelled = daraja.accepted("254700001032")
    assert sink.wait_for(1, paid)[0]["Body"]["stkCallback"]["ResultCode"] == 0
    assert sink.wait_for(1, cancelled)[0]["Body"]["stkCallback"]["ResultCode"] == 1032
    assert "Do you want to pay" not in requests.get(f"{sim.url}/phone", timeout=5).text


def test_by_default_unclaimed_phones_pay_at_once(sink):  # noqa: F811
    server = SimulatorServer(config=SimulatorConfig(callback_delay_s=0.05)).start()
    try:
        checkout = Client(server.url, sink.url).accepted(PERSON)
        assert sink.wait_for(1, checkout)[0]["Body"]["stkCallback"]["ResultCode"] == 0
    finally:
        server.stop()


def test_a_form_posted_from_another_site_is_refused(sim, daraja, sink):  # noqa: F811
    checkout = daraja.accepted(PERSON)
    refused = answer(sim, checkout, "pay", pin="1234", origin="http://evil.example")
    assert refused.status_code == 403
    assert wait_until(lambda: daraja.query(checkout).json()["ResultCode"] == "4999")
    assert sink.bodies(checkout) == []


def test_the_phone_page_is_not_cached_framed_and_escapes_what_it_shows(sim, daraja):
    daraja.accepted(PERSON, AccountReference="<b>x</b>")
    page = requests.get(f"{sim.url}/phone", timeout=5)
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "<b>x</b>" not in page.text and "&lt;b&gt;x&lt;/b&gt;" in page.text
