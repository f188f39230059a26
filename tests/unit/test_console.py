"""The operator's console through Flask's test client (contract §7): sign-in, sessions that
signing out ends on the server, CSRF on every form, the headers that keep pages out of caches
and frames, escaping, and each action's confirmation step. tests/browser/ drives it in
Chromium."""
from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re

import pytest

from ledger import db, inbox, settlement
from ledger.models import (
    OperatorAction, OrphanAssignment, Reconciliation, TopUp, Wallet, WebhookDelivery, utcnow,
)
from tests.messages import taken
from tests.unit.contract_support import make_app
from tests.unit.test_crediting import success_body
from tests.unit.test_support_lookup import credited  # noqa: F401  (a fixture)

pytestmark = pytest.mark.both_databases

OPS_TOKEN = "console-ops-token-0123456789abcdef"


@pytest.fixture
def console_app(settings, database, stub_broker):
    return make_app(dataclasses.replace(settings, ops_token=OPS_TOKEN), stub_broker,
                    RATELIMIT_CONSOLE_SIGN_INS="3 per minute")


@pytest.fixture
def browser(console_app):
    """A client that keeps cookies, as a browser does; not signed in."""
    return console_app.test_client()


def csrf_of(page) -> str:
    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.get_data(True)) \
        or re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(True))
    assert found, page.get_data(True)[:500]
    return found.group(1)


def sign_in(client, token=OPS_TOKEN):
    form = client.get("/console/login")
    return client.post("/console/login", data={"token": token, "csrf_token": csrf_of(form)})


@pytest.fixture
def signed_in(browser):
    assert sign_in(browser).status_code == 303
    return browser


def post_form(client, page_path, action_path, **fields):
    """Post a form the way a browser does: with the CSRF token of the page it came from."""
    token = csrf_of(client.get(page_path))
    return client.post(action_path, data={"csrf_token": token, **fields})


# --- off, sign-in, sessions ----------------------------------------------------------------------

def test_the_console_is_not_there_without_an_ops_token(client):
    for path in ("/console", "/console/login", "/console/topups"):
        assert client.get(path).status_code == 404


def test_every_page_without_a_session_redirects_to_the_sign_in_form(browser):
    for path in ("/console", "/console/", "/console/topups?q=x", "/console/orphans",
                 "/console/dead-letters", "/console/webhooks", "/console/reconcile",
                 "/console/actions", "/console/topups/tu_x", "/console/accounts/acct_x"):
        answer = browser.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["Location"].endswith("/console/login"), path


def test_the_right_token_signs_in_with_a_strict_httponly_cookie(browser):
    answer = sign_in(browser)
    assert answer.status_code == 303 and answer.headers["Location"].endswith("/console")
    cookie = [h for h in answer.headers.getlist("Set-Cookie") if h.startswith("topup_console=")]
    assert cookie and "HttpOnly" in cookie[0] and "SameSite=Strict" in cookie[0]
    assert "Path=/console" in cookie[0] and "Secure" not in cookie[0]   # plain http here
    assert browser.get("/console").status_code == 200


def test_the_cookie_is_secure_behind_https(browser):
    form = browser.get("/console/login", base_url="https://localhost")
    answer = browser.post("/console/login", base_url="https://localhost",
                          headers={"Referer": "https://localhost/console/login"},
                          data={"token": OPS_TOKEN, "csrf_token": csrf_of(form)})
    assert answer.status_code == 303
    cookie = [h for h in answer.headers.getlist("Set-Cookie") if h.startswith("topup_console=")]
    assert "Secure" in cookie[0]


def test_a_wrong_token_answers_the_form_again_with_401_and_no_session(browser):
    answer = sign_in(browser, token="not-the-token")
    assert answer.status_code == 401
    assert "not the ops token" in answer.get_data(True)
    assert 'name="token"' in answer.get_data(True)
    assert browser.get("/console").status_code == 303
    with db.connection():
        assert OperatorAction.get().action == "sign_in_refused"


def test_failed_sign_ins_are_limited_per_address_even_for_the_right_token(browser):
    statuses = [sign_in(browser, token=f"wrong-{i}").status_code for i in range(4)]
    assert statuses == [401, 401, 401, 429]
    assert sign_in(browser).status_code == 429


def test_signing_in_without_the_csrf_token_is_refused(browser):
    answer = browser.post("/console/login", data={"token": OPS_TOKEN})
    assert answer.status_code == 400
    assert browser.get("/console").status_code == 303


def test_signing_out_ends_the_session_on_the_server(signed_in):
    kept = signed_in.get_cookie("topup_console", path="/console").value
    answer = post_form(signed_in, "/console", "/console/logout")
    assert answer.status_code == 303 and answer.headers["Location"].endswith("/console/login")
    assert signed_in.get("/console").status_code == 303
    # the cookie as it was before signing out opens nothing any more
    signed_in.set_cookie("topup_console", kept, path="/console")
    assert signed_in.get("/console").status_code == 303
    with db.connection():
        assert [a.action for a in OperatorAction.select().order_by(OperatorAction.seq)] == [
            "sign_in", "sign_out"]


def test_every_console_page_is_never_cached_and_never_framed(browser, signed_in):
    for answer in (browser.get("/console/login"), signed_in.get("/console"),
                   signed_in.get("/console/topups"), signed_in.get("/console/nope"),
                   signed_in.post("/console/logout")):
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]


def test_the_json_api_and_the_callback_need_no_csrf_token(signed_in, account):
    answer = signed_in.post("/v1/wallet/debits", json={"amount_cents": 1},
                            headers=account["auth"])
    assert answer.status_code == 402          # answered by the API, not refused as a form
    callback = signed_in.post(f"/daraja/callback/{'c0ffee' * 6}",
                              data=success_body("ws_CO_NOCSRF"),
                              headers={"Content-Type": "application/json"})
    assert callback.status_code == 200


# --- finding and reading -------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["id", "ws_CO_SUPPORT_1", "QWE1234567", "qwe1234567"])
def test_a_top_ups_own_key_opens_its_page(signed_in, credited, key):
    q = credited["topup"] if key == "id" else key
    answer = signed_in.get(f"/console/topups?q={q}")
    assert answer.status_code == 303
    assert answer.headers["Location"].endswith(f"/console/topups/{credited['topup']}")


@pytest.mark.parametrize("phone", ["0712 345 678", "+254712345678", "712345678"])
def test_a_phone_in_any_usual_form_lists_its_top_ups_masked(signed_in, credited, phone):
    page = signed_in.get("/console/topups", query_string={"q": phone}).get_data(True)
    assert credited["topup"] in page and "2547****5678" in page
    assert "254712345678" not in page.replace(phone, "")


def test_an_account_id_lists_its_top_ups(signed_in, credited):
    page = signed_in.get("/console/topups", query_string={"q": credited["account"]})
    assert page.status_code == 200 and credited["topup"] in page.get_data(True)


def test_the_top_up_page_shows_its_history_as_a_timeline(signed_in, credited):
    page = signed_in.get(f"/console/topups/{credited['topup']}").get_data(True)
    timeline = page[page.index('class="timeline"'):]
    order = [timeline.index(step) for step in ("requested", "push accepted", "callback",
                                               "credited", "duplicate success")]
    assert order == sorted(order)
    assert "QWE1234567" in page and "KES 1,000.00" in timeline
    assert "254712345678" not in page


def test_what_a_user_typed_comes_back_escaped(signed_in):
    page = signed_in.get("/console/topups", query_string={"q": "<script>alert(1)</script>"})
    body = page.get_data(True)
    assert page.status_code == 200 and "<script>alert(1)" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_an_account_page_shows_no_webhook_secret(signed_in, credited):
    from ledger import webhooks
    with db.connection(), db.write_transaction():
        endpoint = webhooks.create_endpoint(credited["account"], "https://hooks.example.com/x",
                                            ["wallet.top_up"])
    page = signed_in.get(f"/console/accounts/{credited['account']}").get_data(True)
    assert "https://hooks.example.com/x" in page and "KES 1,000.00" in page
    assert endpoint.secret not in page and "whsec_" not in page


def test_the_overview_counts_what_needs_a_person_and_draws_the_day(signed_in, credited):
    keep_orphan("ws_CO_OVERVIEW", "OVERVIEW01")
    page = signed_in.get("/console").get_data(True)
    assert "<svg" in page and "1 succeeded" in page
    assert re.search(r"<strong>1</strong> orphan payments", page)
    assert re.search(r"<strong>0</strong> unknown top-ups", page)


# --- acting ------------------------------------------------------------------------------------

def keep_orphan(checkout, receipt, amount=250):
    with db.connection():
        row, _ = inbox.store_callback(success_body(checkout, amount=amount, receipt=receipt),
                                      "127.0.0.1")
        assert settlement.apply_callback(row.seq) == "orphan"


def test_assigning_an_orphan_asks_for_confirmation_and_a_reason_then_credits_once(
        signed_in, account, other_account):
    keep_orphan("ws_CO_CONSOLE", "CONSOLE001")
    path = "/console/orphans/CONSOLE001/assign"
    confirm = post_form(signed_in, path, path, account=account["id"])
    assert confirm.status_code == 200 and "Credit this payment" in confirm.get_data(True)
    with db.connection():
        assert Wallet.get(Wallet.account == account["id"]).balance_cents == 0
    # confirmed without a reason: asked again, nothing done
    again = post_form(signed_in, path, path, account=account["id"], confirmed="yes", reason=" ")
    assert "Credit this payment" in again.get_data(True)
    done = post_form(signed_in, path, path, account=account["id"], confirmed="yes",
                     reason="customer sent the SMS")
    assert done.status_code == 303 and "/console/topups/tu_" in done.headers["Location"]
    second = post_form(signed_in, path, path, account=other_account["id"], confirmed="yes",
                       reason="twice")
    assert second.status_code == 409 and "assigned already" in second.get_data(True)
    with db.connection():
        assert Wallet.get(Wallet.account == account["id"]).balance_cents == 25_000
        assert Wallet.get(Wallet.account == other_account["id"]).balance_cents == 0
        assert OrphanAssignment.get().assigned_by.startswith("console cs_")
        actions = [(a.action, a.outcome, a.reason) for a in OperatorAction.select()
                   .where(OperatorAction.action == "orphan_assign").order_by(OperatorAction.seq)]
    assert actions == [("orphan_assign", "credited", "customer sent the SMS"),
                       ("orphan_assign", "refused", "twice")]


def test_an_action_posted_without_its_csrf_token_is_refused_and_changes_nothing(
        signed_in, account):
    keep_orphan("ws_CO_NOTOKEN", "NOTOKEN001")
    answer = signed_in.post("/console/orphans/NOTOKEN001/assign",
                            data={"account": account["id"], "confirmed": "yes", "reason": "x"})
    assert answer.status_code == 400 and "Nothing was changed" in answer.get_data(True)
    with db.connection():
        assert Wallet.get(Wallet.account == account["id"]).balance_cents == 0
        assert OrphanAssignment.select().count() == 0


def queue_counts(redis_client, queue) -> tuple[int, int]:
    """A queue's messages ready to run and dead, as the operator's queue view counts them."""
    from telemetry.queues import Queues
    [counts] = [c for c in Queues(redis_client).counts([queue]) if c.queue == queue]
    return counts.ready, counts.dead


def dead_letter(redis_client, queue="topups", actor="push_topup"):
    """A message that failed every retry, left by a real Dramatiq worker on this Redis."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    from tests.waiting import wait_until
    from workers.observability import DeadLetterNotes
    broker = RedisBroker(client=redis_client)
    broker.add_middleware(DeadLetterNotes())

    def fails(topup_id):
        raise ValueError(f"no such top-up {topup_id}")

    dramatiq.actor(fails, actor_name=actor, broker=broker, queue_name=queue,
                   max_retries=0).send("tu_dead")
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        wait_until(lambda: queue_counts(redis_client, queue) == (0, 1),
                   message="the message to die")
    finally:
        worker.stop()
        broker.close()


def test_requeueing_dead_letters_is_confirmed_then_puts_them_back_on_their_queue(
        signed_in, console_app):
    redis_client = console_app.config["REDIS"]
    dead_letter(redis_client)
    page = signed_in.get("/console/dead-letters").get_data(True)
    assert "push_topup" in page and "no such top-up tu_dead" in page
    fields = {"action": "requeue", "queue": "topups"}
    confirm = post_form(signed_in, "/console/dead-letters", "/console/dead-letters", **fields)
    assert confirm.status_code == 200 and "Requeue 1 message" in confirm.get_data(True)
    assert queue_counts(redis_client, "topups") == (0, 1)   # nothing done yet
    done = post_form(signed_in, "/console/dead-letters", "/console/dead-letters", **fields,
                     confirmed="yes", reason="the bug is fixed")
    assert done.status_code == 303
    assert queue_counts(redis_client, "topups") == (1, 0)


def test_a_failing_webhook_delivery_is_sent_again_now(signed_in, credited, stub_broker):
    from ledger import webhooks
    from ledger.models import Event
    with db.connection():
        with db.write_transaction():
            endpoint = webhooks.create_endpoint(credited["account"],
                                                "https://hooks.example.com/y", ["wallet.top_up"])
        # a delivery that gave up after its last retry
        delivery = WebhookDelivery.create(
            id="wd_console1", event=Event.get(Event.topup == credited["topup"]).id,
            endpoint=endpoint.id, status="failed", attempts=13, last_status_code=500)
    assert "wd_console1" in signed_in.get("/console/webhooks").get_data(True)
    path = f"/console/webhooks/{delivery.id}/resend"
    confirm = post_form(signed_in, "/console/webhooks", path)
    assert "Send it again now" in confirm.get_data(True)
    with db.connection():
        assert WebhookDelivery.get(WebhookDelivery.id == "wd_console1").status == "failed"
    done = post_form(signed_in, "/console/webhooks", path, confirmed="yes", reason="fixed")
    assert done.status_code == 303
    with db.connection():
        assert WebhookDelivery.get(WebhookDelivery.id == "wd_console1").status == "pending"
    [sent] = taken(stub_broker, "webhooks")
    assert (sent.actor_name, list(sent.args)) == ("deliver_webhook", ["wd_console1"])


def test_a_statement_is_uploaded_reconciled_and_applied_with_a_reason(signed_in, account):
    from tests.unit.test_reconcile import HEADER, line
    from ledger import pushes, topups
    with db.connection():
        topup, _ = topups.create_topup(account["id"], amount=500, phone="254712345678",
                                       reference=None, metadata={})
        pushes.claim_push(topup.id)
        pushes.record_push_accepted(topup.id, checkout_request_id="ws_CO_STMT",
                                    merchant_request_id="m", query_after_s=60)
        settlement.give_up(topup.id, 1, now=utcnow() + dt.timedelta(minutes=1))
        assert TopUp.get(TopUp.id == topup.id).status == "unknown"
    csv = ("\ufeff" + "\r\n".join([HEADER, line("STMT000001", "254712345678", 500)])
           + "\r\n").encode()
    token = csrf_of(signed_in.get("/console/reconcile"))
    answer = signed_in.post("/console/reconcile", content_type="multipart/form-data",
                            data={"csrf_token": token,
                                  "statement": (io.BytesIO(csv), "statement.csv")})
    assert answer.status_code == 303
    run_page = signed_in.get(answer.headers["Location"]).get_data(True)
    assert "STMT000001" in run_page and "Apply: settle the 1 safe payment" in run_page
    with db.connection():
        assert Wallet.get(Wallet.account == account["id"]).balance_cents == 0
    apply_path = re.search(r'action="(/console/reconcile/uploads/[^"]+/apply)"', run_page)[1]
    confirm = post_form(signed_in, answer.headers["Location"], apply_path)
    assert "Credit 1 payment" in confirm.get_data(True)
    done = post_form(signed_in, answer.headers["Location"], apply_path, confirmed="yes",
                     reason="statement of the 3rd")
    assert done.status_code == 303
    with db.connection():
        assert Wallet.get(Wallet.account == account["id"]).balance_cents == 50_000
        assert Reconciliation.select().where(Reconciliation.apply).count() == 1


def test_a_malformed_statement_is_refused_with_its_line(signed_in):
    token = csrf_of(signed_in.get("/console/reconcile"))
    answer = signed_in.post("/console/reconcile", content_type="multipart/form-data",
                            data={"csrf_token": token,
                                  "statement": (io.BytesIO(b"not,a,statement\n"), "x.csv")})
    assert answer.status_code == 422 and "Nothing was read or changed" in answer.get_data(True)
