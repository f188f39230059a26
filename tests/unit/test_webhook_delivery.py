"""Webhook delivery: signed per Standard Webhooks, retried for days, every attempt recorded.

A real HTTP receiver on 127.0.0.1 verifies each delivery with the reference library; the
retry schedule is shortened for the tests that go through the worker, and walked with an
explicit clock for the ones about days.
"""
import datetime as dt
import ipaddress
import json
import time

import pytest
import standardwebhooks

from ledger import db, webhooks
from ledger.models import WebhookAttempt, WebhookDelivery
from tests.messages import taken
from tests.waiting import wait_until
from tests.unit.contract_support import (  # noqa: F401
    credit, dev_app, dev_client, dev_settings, fail, post_json,
)
from tests.webhook_receiver import Receiver, event_types
from workers import runtime, webhook_urls
from workers import webhooks as worker_webhooks

pytestmark = pytest.mark.both_databases


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def fast_retries(monkeypatch):
    """Retries a few hundredths of a second apart instead of seconds to days apart."""
    monkeypatch.setattr(webhooks, "RETRY_DELAYS_S", (0.05, 0.1, 0.1, 0.2))


@pytest.fixture
def dev_runtime(monkeypatch, dev_settings):
    """Workers that, like the API, may send webhooks to 127.0.0.1."""
    monkeypatch.setattr(runtime.get(), "settings", dev_settings)


def subscribe(client, account, receiver, types=("wallet.top_up", "topup.failed")):
    response = post_json(client, "/v1/webhook_endpoints", {"url": receiver.url,
                                                           "events": list(types)},
                         account["auth"])
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    receiver.secret = body["secret"]
    return body["id"]


def deliveries():
    with db.connection():
        return list(WebhookDelivery.select().order_by(WebhookDelivery.seq))


def attempts_of(delivery_id):
    with db.connection():
        return list(WebhookAttempt.select().where(WebhookAttempt.delivery == delivery_id)
                    .order_by(WebhookAttempt.number))


def test_a_receiver_that_fails_its_first_three_tries_still_verifies_every_event(
        dev_client, account, stub_worker, fast_retries, dev_runtime):
    receiver = Receiver(fail_first=3).start()
    try:
        subscribe(dev_client, account, receiver)
        credit(account["id"], 10)
        fail(account["id"])

        wait_until(lambda: len(receiver.verified) >= 2, timeout=30,
                   message="both events to be delivered")
    finally:
        receiver.stop()

    assert sorted(event_types(receiver)) == ["topup.failed", "wallet.top_up"]
    assert receiver.rejected == []
    listed = dev_client.get("/v1/events", headers=account["auth"]).get_json()["data"]
    assert sorted(receiver.event_ids()) == sorted(e["id"] for e in listed)
    for delivered in receiver.verified:  # the body is the event, exactly as the API shows it
        assert delivered["event"] in listed
        assert delivered["headers"]["webhook-id"] == delivered["event"]["id"]
        assert delivered["path"] == "/hooks/topup?src=gateway"


def test_every_attempt_is_recorded_and_carries_the_event_id_each_time(
        dev_client, account, stub_worker, fast_retries, dev_runtime):
    receiver = Receiver(fail_first=2, failure_status=503).start()
    try:
        subscribe(dev_client, account, receiver, types=["wallet.top_up"])
        credit(account["id"], 10)
        wait_until(lambda: receiver.verified, timeout=30, message="the delivery")
        [delivery] = deliveries()
        wait_until(lambda: deliveries()[0].status == "delivered", timeout=10,
                   message="the delivery to be marked delivered")
    finally:
        receiver.stop()

    event_id = receiver.verified[0]["event"]["id"]
    assert receiver.webhook_ids == [event_id] * 3
    attempts = attempts_of(delivery.id)
    assert [(a.number, a.status_code, a.error) for a in attempts] == [
        (1, 503, "HTTP 503"), (2, 503, "HTTP 503"), (3, 204, None)]
    assert all(a.duration_ms >= 0 for a in attempts)
    done = deliveries()[0]
    assert (done.status, done.attempts, done.last_status_code) == ("delivered", 3, 204)
    assert done.next_attempt_at is None and done.delivered_at is not None


def test_the_signature_is_standard_webhooks_over_id_timestamp_and_body(receiver):
    secret = webhooks.new_secret()
    body = json.dumps({"id": "evt_1", "object": "event"})
    headers = worker_webhooks.sign(secret, "evt_1", body)

    assert headers["webhook-id"] == "evt_1"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["webhook-signature"].startswith("v1,")
    assert standardwebhooks.Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(webhooks.new_secret()).verify(body, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(body.replace("evt_1", "evt_2"), headers)


# --- the schedule, walked with an explicit clock ---------------------------------------------

def one_delivery(dev_client, account, url="http://127.0.0.1:9/down"):
    response = post_json(dev_client, "/v1/webhook_endpoints",
                         {"url": url, "events": ["wallet.top_up"]}, account["auth"])
    assert response.status_code == 201
    credit(account["id"], 1)
    [delivery] = deliveries()
    return delivery


def test_a_receiver_that_never_answers_is_tried_with_growing_delays_for_more_than_three_days(
        dev_client, account):
    delivery = one_delivery(dev_client, account)
    clock = delivery.next_attempt_at
    gaps = []
    with db.connection():
        while True:
            claimed = webhooks.claim(delivery.id, now=clock)
            assert claimed is not None, f"attempt {len(gaps) + 1} could not be claimed"
            status, delay = webhooks.record_attempt(claimed, status_code=None,
                                                    error="connection refused or unreachable",
                                                    duration_ms=3, now=clock)
            if delay is None:
                break
            assert webhooks.claim(delivery.id, now=clock) is None  # not due yet
            gaps.append(delay)
            clock += dt.timedelta(seconds=delay)

    assert status == "failed"
    assert gaps == sorted(gaps) and gaps[0] <= 5
    assert sum(gaps) >= 72 * 3600
    assert len(attempts_of(delivery.id)) == len(gaps) + 1 == webhooks.MAX_ATTEMPTS
    final = deliveries()[0]
    assert final.status == "failed" and final.next_attempt_at is None


def test_a_delivery_cannot_be_claimed_twice_at_once_but_can_after_its_worker_died(
        dev_client, account):
    delivery = one_delivery(dev_client, account)
    now = delivery.next_attempt_at
    with db.connection():
        first = webhooks.claim(delivery.id, now=now)
        second = webhooks.claim(delivery.id, now=now)
        assert first is not None and second is None
        # the worker holding it died mid-attempt: once the lease is over, the sweep re-sends it
        later = now + webhooks.CLAIM_LEASE + dt.timedelta(seconds=61)
        assert worker_webhooks.due_deliveries(later) == [delivery.id]
        retaken = webhooks.claim(delivery.id, now=later)
    assert retaken is not None and retaken.attempt == 2


def test_an_attempt_recorded_after_its_lease_was_taken_over_changes_nothing(dev_client, account):
    delivery = one_delivery(dev_client, account)
    now = delivery.next_attempt_at
    later = now + webhooks.CLAIM_LEASE + dt.timedelta(seconds=1)
    with db.connection():
        slow = webhooks.claim(delivery.id, now=now)
        fresh = webhooks.claim(delivery.id, now=later)
        assert webhooks.record_attempt(fresh, status_code=200, error=None, duration_ms=5,
                                       now=later) == ("delivered", None)
        assert webhooks.record_attempt(slow, status_code=500, error="HTTP 500", duration_ms=9,
                                       now=later)[0] == "superseded"
    assert deliveries()[0].status == "delivered"
    assert len(attempts_of(delivery.id)) == 2


def test_a_message_for_a_delivered_delivery_does_nothing(
        dev_client, account, receiver, dev_runtime):
    subscribe(dev_client, account, receiver, types=["wallet.top_up"])
    credit(account["id"], 1)
    [delivery] = deliveries()
    with db.connection():
        assert worker_webhooks.attempt(delivery.id, allow_private=True)[0] == "delivered"
        assert worker_webhooks.attempt(delivery.id, allow_private=True) == ("not_claimed", None)
    assert receiver.attempts == 1


def test_deleting_the_endpoint_cancels_its_pending_deliveries(dev_client, account):
    delivery = one_delivery(dev_client, account)
    dev_client.delete(f"/v1/webhook_endpoints/{delivery.endpoint_id}", headers=account["auth"])
    with db.connection():
        assert worker_webhooks.attempt(delivery.id, allow_private=True) == ("not_claimed", None)
    assert deliveries()[0].status == "cancelled"


# --- where a delivery may go -----------------------------------------------------------------

def test_a_url_allowed_at_creation_is_checked_again_at_delivery(dev_client, account, receiver):
    subscribe(dev_client, account, receiver, types=["wallet.top_up"])  # allowed then (dev)
    credit(account["id"], 1)
    [delivery] = deliveries()

    with db.connection():  # production settings now: 127.0.0.1 is not a place to send to
        status, delay = worker_webhooks.attempt(delivery.id, allow_private=False)

    assert (status, receiver.attempts) == ("pending", 0)
    [attempt] = attempts_of(delivery.id)
    assert attempt.status_code is None and attempt.error.startswith("refused")


def test_a_name_that_rebinds_to_a_private_address_is_refused_before_any_connection(receiver):
    answers = iter([[ipaddress.ip_address("93.184.216.34")], [ipaddress.ip_address("127.0.0.1")]])
    url = f"http://rebind.test:{receiver.url.split(':')[2]}"
    webhook_urls.check(url, allow_private=False, resolver=lambda h, p: next(answers))
    with pytest.raises(webhook_urls.UnsafeUrl):
        webhook_urls.post(url, b"{}", {}, allow_private=False, resolver=lambda h, p: next(answers))
    assert receiver.attempts == 0


def test_the_post_goes_to_the_address_that_was_checked_with_the_urls_host_name(receiver):
    port = receiver.url.split(":")[2].split("/")[0]
    status = webhook_urls.post(f"http://hooks.test:{port}/in", b"{}", {}, allow_private=True,
                               resolver=lambda h, p: [ipaddress.ip_address("127.0.0.1")])
    assert status == 400  # no secret set: the receiver refused to verify, but it was reached
    assert receiver.hosts == [f"hooks.test:{port}"]


def test_a_redirect_is_not_followed(receiver):
    redirecting = Receiver(redirect_to=receiver.url).start()
    try:
        status = webhook_urls.post(redirecting.url, b"{}", {}, allow_private=True)
    finally:
        redirecting.stop()
    assert status == 307 and redirecting.attempts == 1 and receiver.attempts == 0


def test_a_receiver_slower_than_the_read_timeout_is_a_failed_attempt(receiver, monkeypatch):
    monkeypatch.setattr(webhook_urls, "READ_TIMEOUT_S", 0.2)
    receiver.delay_s = 1.0
    with pytest.raises(webhook_urls.DeliveryFailed, match="no answer in time"):
        webhook_urls.post(receiver.url, b"{}", {}, allow_private=True)


def test_a_refused_connection_is_a_failed_attempt_not_an_error():
    with pytest.raises(webhook_urls.DeliveryFailed, match="refused"):
        webhook_urls.post("http://127.0.0.1:9/", b"{}", {}, allow_private=True)


@pytest.mark.parametrize("address,public", [
    ("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True),
    ("127.0.0.1", False), ("10.0.0.1", False), ("172.31.255.255", False), ("192.168.0.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.1.1", False),
    ("::1", False), ("fe80::1", False), ("fd00::1", False), ("::ffff:10.0.0.1", False),
    ("2002:7f00:1::", False), ("64:ff9b::a00:1", False), ("::", False),
])
def test_only_global_unicast_addresses_count_as_public(address, public):
    assert webhook_urls.is_public(ipaddress.ip_address(address)) is public


# Each IPv6 form that carries an IPv4 address, carrying a loopback, a private and a
# link-local (cloud metadata) one.
@pytest.mark.parametrize("address", [
    # IPv4-mapped, ::ffff:a.b.c.d
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    # IPv4-compatible (deprecated), ::a.b.c.d
    "::127.0.0.1", "::10.0.0.1", "::169.254.169.254",
    # NAT64, 64:ff9b::a.b.c.d
    "64:ff9b::127.0.0.1", "64:ff9b::10.0.0.1", "64:ff9b::169.254.169.254",
    # 6to4, 2002:AABB:CCDD::/48 for a.b.c.d
    "2002:7f00:1::1", "2002:a00:1::1", "2002:a9fe:a9fe::1",
    # Teredo, 2001:0:server:flags:port:client, the client's address with every bit flipped
    "2001:0:4136:e378:8000:63bf:80ff:fffe", "2001:0:4136:e378:8000:63bf:f5ff:fffe",
    "2001:0:4136:e378:8000:63bf:5601:5601",
])
def test_an_ipv6_address_carrying_a_loopback_private_or_link_local_ipv4_is_not_public(address):
    assert webhook_urls.is_public(ipaddress.ip_address(address)) is False


@pytest.mark.parametrize("address", ["2606:4700:4700::1111", "2001:4860:4860::8888",
                                     "2a00:1450:4001:80b::200e"])
def test_a_native_public_ipv6_address_is_public(address):
    assert webhook_urls.is_public(ipaddress.ip_address(address)) is True


def test_an_ipv4_compatible_loopback_url_is_refused_at_delivery_before_any_connection(
        dev_client, account, receiver):
    port = receiver.url.split(":")[2].split("/")[0]
    url = f"http://[::127.0.0.1]:{port}/in"
    delivery = one_delivery(dev_client, account, url=url)  # allowed at creation (development)

    with db.connection():  # production settings now
        status, delay = worker_webhooks.attempt(delivery.id, allow_private=False)

    assert (status, receiver.attempts) == ("pending", 0)
    [attempt] = attempts_of(delivery.id)
    assert attempt.status_code is None and attempt.error.startswith("refused")


def test_sweep_resends_what_is_due_and_forgets_old_idempotency_keys(
        dev_client, account, stub_broker):
    from ledger.models import IdempotencyRecord
    delivery = one_delivery(dev_client, account)
    post_json(dev_client, "/v1/wallet/debits", {"amount_cents": 1}, account["auth"],
              **{"Idempotency-Key": "old"})
    stub_broker.flush_all()
    with db.connection():
        record = IdempotencyRecord.get()
    found = worker_webhooks.sweep(now=record.created_at + dt.timedelta(hours=49))
    assert found == {"webhooks_due": 1, "idempotency_keys_purged": 1}
    assert [list(m.args) for m in taken(stub_broker, "webhooks")] == [[delivery.id]]
    with db.connection():
        assert IdempotencyRecord.select().count() == 0


def test_idempotency_answers_are_kept_at_least_24_hours(dev_client, account):
    post_json(dev_client, "/v1/wallet/debits", {"amount_cents": 1}, account["auth"],
              **{"Idempotency-Key": "keep"})
    from ledger import idempotency
    from ledger.models import IdempotencyRecord
    with db.connection():
        record = IdempotencyRecord.get()
        assert idempotency.purge(record.created_at + dt.timedelta(hours=24, minutes=1)) == 0
        assert IdempotencyRecord.select().count() == 1


def test_the_schedule_starts_at_5_seconds_and_is_over_three_days_in_all():
    assert webhooks.retry_delay_s(1) == 5
    assert webhooks.retry_delay_s(webhooks.MAX_ATTEMPTS) is None
    assert sum(webhooks.RETRY_DELAYS_S) >= 72 * 3600


def test_the_schedulers_sweep_resends_webhook_deliveries_whose_message_was_lost(
        dev_client, account, stub_broker):
    from workers import scheduler
    delivery = one_delivery(dev_client, account)
    stub_broker.flush_all()  # the message is lost
    with db.connection():
        WebhookDelivery.update(enqueued_at=delivery.created_at - dt.timedelta(minutes=5)).where(
            WebhookDelivery.id == delivery.id).execute()
    found = scheduler.sweep_once(3600)
    assert found["webhooks_due"] == 1
    assert [list(m.args) for m in taken(stub_broker, "webhooks")] == [[delivery.id]]


def test_an_unexpected_error_while_posting_is_recorded_as_a_failed_attempt(dev_client, account):
    delivery = one_delivery(dev_client, account)

    def broken_post(*args, **kwargs):
        raise RuntimeError("a bug")

    with db.connection():
        status, delay = worker_webhooks.attempt(delivery.id, allow_private=True, post=broken_post)
    assert (status, delay) == ("pending", webhooks.RETRY_DELAYS_S[0])
    [attempt] = attempts_of(delivery.id)
    assert attempt.error == "unexpected error: RuntimeError"


class KeepAliveReceiver:
    """An HTTP/1.1 receiver that counts connections; with ``drop_second``, it closes a
    connection on its second request without answering, as a receiver whose keep-alive
    timeout ran out just as the request came."""

    def __init__(self, *, drop_second=False):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        receiver = self
        self.connections, self.answered, self.dropped = 0, 0, 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                receiver.connections += 1
                self.served = 0

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.served += 1
                if drop_second and self.served == 2:
                    receiver.dropped += 1
                    self.close_connection = True
                    return
                receiver.answered += 1
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        import threading
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_deliveries_to_one_receiver_share_a_connection():
    receiver = KeepAliveReceiver()
    try:
        statuses = [webhook_urls.post(receiver.url, b"{}", {}, allow_private=True)
                    for _ in range(5)]
    finally:
        receiver.stop()
    assert statuses == [204] * 5 and receiver.answered == 5
    assert receiver.connections == 1


def test_a_kept_connection_closed_by_the_receiver_does_not_fail_the_delivery():
    receiver = KeepAliveReceiver(drop_second=True)
    try:
        statuses = [webhook_urls.post(receiver.url, b"{}", {}, allow_private=True)
                    for _ in range(3)]
    finally:
        receiver.stop()
    assert statuses == [204] * 3
    assert receiver.dropped >= 1 and receiver.answered == 3


def test_a_kept_connection_is_not_taken_by_a_name_that_now_resolves_elsewhere():
    receiver = KeepAliveReceiver()
    port = receiver.url.split(":")[2].split("/")[0]
    local = [ipaddress.ip_address("127.0.0.1")]
    try:
        assert webhook_urls.post(f"http://hooks.test:{port}/in", b"{}", {}, allow_private=True,
                                 resolver=lambda h, p: local) == 204
        with pytest.raises(webhook_urls.UnsafeUrl):
            webhook_urls.post(f"http://hooks.test:{port}/in", b"{}", {}, allow_private=False,
                              resolver=lambda h, p: local)
    finally:
        receiver.stop()
    assert receiver.answered == 1
