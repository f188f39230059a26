"""The simulator's phone in a real browser, with the whole gateway running (gunicorn, dramatiq
workers, the scheduler, PostgreSQL, Redis): a person pays one prompt with a PIN and cancels
another, and the top-ups follow, in the API and in the console."""
from __future__ import annotations

import os
import pathlib

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.integration.browser import replaced
from tests.integration.system import sim_call
from tests.integration.test_console_browser import OPS_TOKEN, find, sign_in, wait_for_text
from tests.waiting import wait_until

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def gateway(pg_system, simulator):
    """The gateway against a simulator whose ordinary phones wait for a person."""
    sim_call(simulator, "POST", "/__sim/config", {"unclaimed_phones": "wait"})
    pg_system.env.update({"OPS_TOKEN": OPS_TOKEN, "STK_QUERY_AFTER_S": "30"})
    pg_system.start_api(workers=1, threads=4)
    pg_system.start_workers(processes=1, threads=4)
    pg_system.start_scheduler()
    pg_system.account, pg_system.key = pg_system.create_account("phone")
    return pg_system


def prompted(simulator, phone: str) -> dict:
    """The prompt on the phone, once the gateway's push has reached the simulator."""
    return wait_until(lambda: next(iter(sim_call(simulator, "GET",
                                                 f"/__sim/transactions?phone={phone}")["data"]),
                                   None), timeout=30, message=f"a prompt on {phone}")


def status_of(gateway, topup_id: str) -> dict:
    return gateway.get(gateway.key, f"/v1/topups/{topup_id}")


def test_paying_a_prompt_on_the_phone_credits_the_top_up(chrome, gateway, simulator):
    topup = gateway.topup(gateway.key, 1000, "0712 345 678", reference="DEMO2")
    checkout = prompted(simulator, "254712345678")["checkout_request_id"]
    chrome.get(simulator.url + "/phone")
    wait_for_text(chrome, "Do you want to pay KES 1,000")
    assert status_of(gateway, topup["id"])["status"] == "pending"
    if os.environ.get("TOPUP_DOCS_SCREENSHOTS") == "1":
        chrome.save_screenshot(str(DOCS / "phone.png"))
    chrome.find_element(By.CSS_SELECTOR, f"#prompt-{checkout} a.pay").click()
    pin = WebDriverWait(chrome, 10).until(lambda d: d.find_element(By.NAME, "pin"))
    pin.send_keys("1234")
    button = chrome.find_element(By.CSS_SELECTOR, "button.pay")
    button.click()
    WebDriverWait(chrome, 10).until(replaced(button))
    wait_for_text(chrome, "Answered lately")
    assert "Do you want to pay" not in chrome.find_element(By.TAG_NAME, "body").text

    paid = wait_until(lambda: (t := status_of(gateway, topup["id"]))["status"] == "succeeded"
                      and t, timeout=30, message="the top-up to succeed")
    assert paid["mpesa_receipt"]
    wallet = gateway.get(gateway.key, "/v1/wallet")
    assert wallet["balance_cents"] == 100_000
    # the operator finds it by the receipt the customer's SMS carries, and sees it succeed
    sign_in(chrome, gateway)
    find(chrome, paid["mpesa_receipt"])
    wait_for_text(chrome, f"Top-up {topup['id']}")
    assert "succeeded" in chrome.find_element(By.TAG_NAME, "h1").text
    assert "credited" in chrome.find_element(By.CSS_SELECTOR, "ol.timeline").text


def test_cancelling_a_prompt_on_the_phone_fails_the_top_up(chrome, gateway, simulator):
    topup = gateway.topup(gateway.key, 250, "0712 345 679")
    checkout = prompted(simulator, "254712345679")["checkout_request_id"]
    chrome.get(simulator.url + "/phone")
    wait_for_text(chrome, "Do you want to pay KES 250")
    button = chrome.find_element(
        By.CSS_SELECTOR, f"#prompt-{checkout} button[value=cancel]")
    button.click()
    WebDriverWait(chrome, 10).until(replaced(button))
    failed = wait_until(lambda: (t := status_of(gateway, topup["id"]))["status"] == "failed"
                        and t, timeout=30, message="the top-up to fail")
    assert failed["failure_code"] == "1032"
    assert requests.get(f"{gateway.api_url}/v1/wallet", timeout=10, headers={
        "Authorization": f"Bearer {gateway.key}"}).json()["balance_cents"] == 0
