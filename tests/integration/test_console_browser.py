"""The operator's console in a real browser (headless Chromium), against the API under
gunicorn on PostgreSQL and Redis: signing in and being refused, finding a top-up by each of
its keys and reading its timeline, assigning an orphan payment once, requeueing a dead letter,
a form without its CSRF token, and signing out for good.

``TOPUP_DOCS_SCREENSHOTS=1`` also saves the overview and a timeline as docs/console*.png
(docs/operations.md shows them)."""
from __future__ import annotations

import os
import pathlib

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker
from selenium.common.exceptions import (
    NoSuchElementException, StaleElementReferenceException, WebDriverException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from ledger import accounts, db, inbox, pushes, settlement, topups, webhooks
from ledger.models import OrphanAssignment, Wallet
from tests.integration.browser import replaced
from tests.integration.system import System, configure_test_process
from tests.unit.test_crediting import success_body
from telemetry.queues import Queues
from tests.waiting import wait_until
from workers.observability import DeadLetterNotes

OPS_TOKEN = "browser-ops-token-0123456789abcdef"
DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def console(tmp_path_factory, redis_server, postgres_server):
    """The API alone (no workers: what the browser changes stays where it was put), with an
    ops token, and a ledger holding one credited top-up and one orphan payment."""
    from simulator.server import SimulatorServer
    sim = SimulatorServer().start()
    database_url = postgres_server.create_database("browser_console")
    redis_lib.Redis.from_url(redis_server.url).flushdb()
    system = System(tmp_path_factory.mktemp("console"), redis_url=redis_server.url,
                    database_url=database_url, simulator_url=sim.url,
                    extra_env={"OPS_TOKEN": OPS_TOKEN, "WEBHOOK_ALLOW_PRIVATE": "1"})
    system.database_url = database_url
    with db.connection():
        account, _ = accounts.create_account("Acme Ltd")
        other, _ = accounts.create_account("Other Ltd")
        topup, _ = topups.create_topup(account.id, amount=1000, phone="254712345678",
                                       reference="INV42", metadata={})
        pushes.claim_push(topup.id)
        pushes.record_push_accepted(topup.id, checkout_request_id="ws_CO_BROWSER_1",
                                    merchant_request_id="m-1", query_after_s=3600)
        with db.write_transaction():
            webhooks.create_endpoint(account.id, "http://127.0.0.1:9/hooks", ["wallet.top_up"])
        for body in (success_body("ws_CO_BROWSER_1", receipt="BRW1234567"),
                     success_body("ws_CO_NOBODY_1", amount=300, receipt="ORPHBRW001",
                                  phone=254722000111)):
            row, _ = inbox.store_callback(body, "127.0.0.1")
            settlement.apply_callback(row.seq)
    system.start_api(workers=1, threads=4)
    system.seeded = {"account": account.id, "other": other.id, "topup": topup.id}
    yield system
    system.stop()
    sim.stop()


@pytest.fixture
def ledger_of(console):
    """This process reads the console's ledger (another test may have bound another)."""
    configure_test_process(console.database_url)
    return console


def url(console, path: str) -> str:
    return console.api_url + path


def wait_for_text(chrome, text: str, timeout: float = 10):
    """Poll the page (it may be loading the next one) until it shows ``text``."""
    # mid-navigation, chromedriver may also answer "Node … does not belong to the document"
    WebDriverWait(chrome, timeout, ignored_exceptions=(StaleElementReferenceException,
                                                       NoSuchElementException,
                                                       WebDriverException)).until(
        lambda d: text in d.find_element(By.TAG_NAME, "body").text)


def sign_in(chrome, console, token=OPS_TOKEN):
    chrome.get(url(console, "/console"))
    assert chrome.current_url.endswith("/console/login")
    chrome.find_element(By.NAME, "token").send_keys(token)
    click_and_wait(chrome, chrome.find_element(By.CSS_SELECTOR, "form#signin button"))


def click_and_wait(chrome, element):
    """Click, and wait until the next page has replaced this one."""
    element.click()
    WebDriverWait(chrome, 10).until(replaced(element))


def find(chrome, key: str):
    box = chrome.find_element(By.CSS_SELECTOR, "form.search input[name=q]")
    box.clear()
    box.send_keys(key)
    click_and_wait(chrome, chrome.find_element(By.CSS_SELECTOR, "form.search button"))


def confirm_with(chrome, reason: str):
    chrome.find_element(By.NAME, "reason").send_keys(reason)
    chrome.find_element(By.CSS_SELECTOR, "form.confirm button[type=submit]").click()


def test_signing_in_with_the_ops_token_opens_the_overview(chrome, console):
    sign_in(chrome, console)
    wait_for_text(chrome, "Needs a person")
    body = chrome.find_element(By.TAG_NAME, "body").text
    assert "1 orphan payments" in body and "Daraja's error answers" in body
    assert chrome.find_elements(By.CSS_SELECTOR, "svg.chart rect")
    if os.environ.get("TOPUP_DOCS_SCREENSHOTS") == "1":
        chrome.save_screenshot(str(DOCS / "console.png"))


def test_a_wrong_token_is_refused_and_opens_nothing(chrome, console):
    sign_in(chrome, console, token="not-the-ops-token")
    wait_for_text(chrome, "That is not the ops token.")
    chrome.get(url(console, "/console/orphans"))
    assert chrome.current_url.endswith("/console/login")


@pytest.mark.parametrize("key", ["id", "checkout", "receipt", "phone", "account"])
def test_a_top_up_is_found_by_each_of_its_keys(chrome, console, key):
    seeded = console.seeded
    typed = {"id": seeded["topup"], "checkout": "ws_CO_BROWSER_1", "receipt": "brw1234567",
             "phone": "0712 345 678", "account": seeded["account"]}[key]
    sign_in(chrome, console)
    find(chrome, typed)
    if key in ("phone", "account"):      # a list, phones masked: the top-up is one click away
        wait_for_text(chrome, seeded["topup"])
        assert "2547****5678" in chrome.page_source and "254712345678" not in chrome.page_source
        chrome.find_element(By.LINK_TEXT, seeded["topup"]).click()
    wait_for_text(chrome, f"Top-up {seeded['topup']}")
    assert chrome.current_url.endswith(f"/console/topups/{seeded['topup']}")


def test_the_top_up_page_tells_its_story_as_a_timeline(chrome, console):
    sign_in(chrome, console)
    find(chrome, "BRW1234567")
    wait_for_text(chrome, "Timeline")
    steps = [li.find_element(By.TAG_NAME, "strong").text
             for li in chrome.find_elements(By.CSS_SELECTOR, "ol.timeline li")]
    assert steps[:3] == ["requested", "push accepted", "callback"]
    assert {"credited", "ledger entry"} == set(steps[3:5])
    assert "KES 1,000.00" in chrome.find_element(By.CSS_SELECTOR, "ol.timeline").text
    if os.environ.get("TOPUP_DOCS_SCREENSHOTS") == "1":
        chrome.save_screenshot(str(DOCS / "console-timeline.png"))


def test_an_orphan_payment_is_assigned_once_and_a_second_assignment_is_refused(
        chrome, ledger_of):
    console = ledger_of
    sign_in(chrome, console)
    assign_page = url(console, "/console/orphans/ORPHBRW001/assign")
    chrome.get(assign_page)
    first_tab = chrome.current_window_handle
    chrome.switch_to.new_window("tab")      # a second operator, in the same console
    chrome.get(assign_page)
    second_tab = chrome.current_window_handle

    chrome.switch_to.window(first_tab)
    chrome.find_element(By.NAME, "account").send_keys(console.seeded["other"])
    chrome.find_element(By.CSS_SELECTOR, "form#assign button[type=submit]").click()
    wait_for_text(chrome, "Credit this payment to the account")
    assert "KES 300.00" in chrome.find_element(By.CSS_SELECTOR, "dl.facts").text
    confirm_with(chrome, "customer sent the SMS, ticket 4411")
    wait_for_text(chrome, "ORPHBRW001 credited to")
    assert "succeeded" in chrome.find_element(By.TAG_NAME, "h1").text

    chrome.switch_to.window(second_tab)
    chrome.find_element(By.NAME, "account").send_keys(console.seeded["account"])
    chrome.find_element(By.CSS_SELECTOR, "form#assign button[type=submit]").click()
    wait_for_text(chrome, "Credit this payment to the account")
    confirm_with(chrome, "the same payment, again")
    wait_for_text(chrome, "Not assigned")
    assert "assigned already" in chrome.find_element(By.TAG_NAME, "body").text
    with db.connection():
        assert Wallet.get(Wallet.account == console.seeded["other"]).balance_cents == 30_000
        assert OrphanAssignment.select().count() == 1


def dead_letter(redis_url: str) -> None:
    """A push_topup message that failed its only try, left in Redis by a real worker."""
    broker = RedisBroker(url=redis_url)
    broker.add_middleware(DeadLetterNotes())

    def push_topup(topup_id):
        raise RuntimeError(f"no top-up {topup_id}")

    dramatiq.actor(push_topup, broker=broker, queue_name="topups", max_retries=0).send("tu_x")
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        wait_until(lambda: topups_queue(redis_url) == (0, 1), message="a dead letter")
    finally:
        worker.stop()
        broker.close()


def topups_queue(redis_url: str) -> tuple[int, int]:
    """The topups queue's messages ready to run and dead, as the operator's views count them."""
    with redis_lib.Redis.from_url(redis_url) as client:
        [topups] = [q for q in Queues(client).counts(["topups"]) if q.queue == "topups"]
    return topups.ready, topups.dead


def test_a_dead_letter_is_requeued_after_a_confirmation(chrome, console):
    dead_letter(console.env["REDIS_URL"])
    sign_in(chrome, console)
    chrome.get(url(console, "/console/dead-letters"))
    wait_for_text(chrome, "no top-up tu_x")
    chrome.find_element(By.XPATH, "//div[@class='queue-actions']//button[contains(., "
                                  "'Requeue all')]").click()
    wait_for_text(chrome, "Requeue 1 message")
    confirm_with(chrome, "the push bug is fixed")
    wait_for_text(chrome, "Requeued 1 dead letter of topups")
    assert "No dead letters." in chrome.find_element(By.TAG_NAME, "body").text
    assert topups_queue(console.env["REDIS_URL"]) == (1, 0)


def test_a_form_sent_without_its_csrf_token_is_refused_and_changes_nothing(chrome, ledger_of):
    console = ledger_of
    with db.connection():
        row, _ = inbox.store_callback(success_body("ws_CO_NOBODY_2", amount=50,
                                                   receipt="ORPHBRW002"), "127.0.0.1")
        settlement.apply_callback(row.seq)
    sign_in(chrome, console)
    chrome.get(url(console, "/console/orphans/ORPHBRW002/assign"))
    chrome.find_element(By.NAME, "account").send_keys(console.seeded["account"])
    chrome.execute_script("document.querySelector('form#assign input[name=csrf_token]').remove()")
    chrome.find_element(By.CSS_SELECTOR, "form#assign button[type=submit]").click()
    wait_for_text(chrome, "Form refused")
    assert "Nothing was changed" in chrome.find_element(By.TAG_NAME, "body").text
    with db.connection():
        assert OrphanAssignment.select().where(
            OrphanAssignment.mpesa_receipt == "ORPHBRW002").count() == 0


def test_signing_out_ends_the_session_and_the_old_cookie_opens_nothing(chrome, console):
    sign_in(chrome, console)
    wait_for_text(chrome, "Needs a person")
    [cookie] = [c for c in chrome.get_cookies() if c["name"] == "topup_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    chrome.find_element(By.CSS_SELECTOR, "form.signout button").click()
    wait_for_text(chrome, "Sign in")
    chrome.delete_all_cookies()
    chrome.add_cookie({k: cookie[k] for k in ("name", "value", "path")})
    chrome.get(url(console, "/console"))
    assert chrome.current_url.endswith("/console/login")
