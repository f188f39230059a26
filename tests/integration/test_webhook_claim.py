"""A webhook delivery's claim (``ledger.webhooks.claim``) on both databases: one statement on
PostgreSQL, a transaction of two on SQLite, with the same answers. A delivery is claimed
once however many workers ask at once, only while it is pending and due, and a deleted
endpoint's delivery is cancelled instead, its attempt not counted."""
from __future__ import annotations

import datetime as dt
import itertools
import json
import threading

import pytest

from ledger import accounts, db, events, migrate, topups, webhooks
from ledger.models import Event, TopUp, WebhookDelivery, WebhookEndpoint
from tests.integration.test_hot_paths_pg import at_once

pytestmark = pytest.mark.both_databases


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    """A migrated ledger with one account, bound in this process: the account's id."""
    if request.param == "postgresql":
        yield request.getfixturevalue("ledger_pg")
        return
    database = db.bind(f"sqlite:///{tmp_path}/ledger.db")
    with db.connection():
        migrate.upgrade()
        account, _ = accounts.create_account("hot")
    yield account.id
    database.close()


_checkouts = itertools.count(1)


def a_delivery(account_id: str, *, checkout_request_id: str | None = "ws_CO_") -> WebhookDelivery:
    """One pending delivery of a ``wallet.top_up`` event for a top-up, to a new endpoint
    (the account's earlier endpoints deleted)."""
    if checkout_request_id is not None:
        checkout_request_id += str(next(_checkouts))
    with db.connection():
        topup, _ = topups.create_topup(account_id, amount=100, phone="254712345678",
                                       reference=None, metadata={})
        with db.write_transaction():
            (TopUp.update(checkout_request_id=checkout_request_id)
             .where(TopUp.id == topup.id).execute())
            for endpoint in WebhookEndpoint.select().where(WebhookEndpoint.deleted_at.is_null()):
                webhooks.delete_endpoint(account_id, endpoint.id)
            webhooks.create_endpoint(account_id, "https://example.com/hooks", ["wallet.top_up"])
            events.publish(account_id, "wallet.top_up", {"amount": "1.00"}, topup_id=topup.id)
        return WebhookDelivery.select().order_by(WebhookDelivery.seq.desc()).get()


def row(delivery_id: str) -> WebhookDelivery:
    with db.connection():
        return WebhookDelivery.get(WebhookDelivery.id == delivery_id)


def test_a_claim_returns_the_endpoint_the_event_and_its_topup(ledger):
    delivery = a_delivery(ledger)
    now = delivery.next_attempt_at
    with db.connection():
        claimed = webhooks.claim(delivery.id, now=now)
        endpoint = WebhookEndpoint.get(WebhookEndpoint.id == delivery.endpoint_id)
        event = Event.get(Event.id == delivery.event_id)
    assert claimed == webhooks.Claimed(
        delivery_id=delivery.id, attempt=1, url="https://example.com/hooks",
        secret=endpoint.secret, event_id=event.id,
        body=json.dumps(events.event_object(event), separators=(",", ":")),
        topup_id=event.topup_id, checkout_request_id=event.topup.checkout_request_id)
    assert claimed.checkout_request_id.startswith("ws_CO_")
    after = row(delivery.id)
    assert (after.status, after.attempts) == ("pending", 1)
    assert after.next_attempt_at == now + webhooks.CLAIM_LEASE and after.updated_at == now


def test_an_event_without_a_checkout_request_id_is_claimed_with_none(ledger):
    delivery = a_delivery(ledger, checkout_request_id=None)
    with db.connection():
        claimed = webhooks.claim(delivery.id, now=delivery.next_attempt_at)
    assert claimed.attempt == 1 and claimed.topup_id and claimed.checkout_request_id is None


def test_two_workers_claiming_one_delivery_at_once_claim_it_once(ledger):
    for _ in range(10):
        delivery = a_delivery(ledger)
        claims = at_once(2, lambda: webhooks.claim(delivery.id, now=delivery.next_attempt_at))
        assert not [c for c in claims if isinstance(c, Exception)], claims
        won = [c for c in claims if c is not None]
        assert len(won) == 1 and won[0].attempt == 1, claims
        assert row(delivery.id).attempts == 1


def test_a_delivery_not_due_delivered_given_up_or_cancelled_is_not_claimed(ledger):
    delivery = a_delivery(ledger)
    due = delivery.next_attempt_at
    with db.connection():
        assert webhooks.claim(delivery.id, now=due - dt.timedelta(seconds=2)) is None
        assert webhooks.claim("whd_nosuchdelivery", now=due) is None
        for status in ("delivered", "failed", "cancelled"):
            (WebhookDelivery.update(status=status).where(WebhookDelivery.id == delivery.id)
             .execute())
            assert webhooks.claim(delivery.id, now=due) is None
    after = row(delivery.id)
    assert after.attempts == 0 and after.next_attempt_at == due
    assert after.updated_at == delivery.updated_at


def test_a_delivery_claimed_and_still_within_its_lease_is_not_claimed_again(ledger):
    delivery = a_delivery(ledger)
    now = delivery.next_attempt_at
    with db.connection():
        assert webhooks.claim(delivery.id, now=now) is not None
        assert webhooks.claim(delivery.id, now=now + webhooks.CLAIM_LEASE
                              - dt.timedelta(seconds=2)) is None
        again = webhooks.claim(delivery.id, now=now + webhooks.CLAIM_LEASE)
    assert again.attempt == 2 and row(delivery.id).attempts == 2


def test_the_delivery_of_an_endpoint_deleted_meanwhile_is_cancelled_not_claimed(ledger):
    # delete_endpoint cancels the pending deliveries too; a delivery it had not cancelled
    # (an endpoint emptied by hand) is cancelled by the claim, with no attempt counted
    delivery = a_delivery(ledger)
    now = delivery.next_attempt_at + dt.timedelta(seconds=3)
    with db.connection():
        (WebhookEndpoint.update(deleted_at=now, secret="")
         .where(WebhookEndpoint.id == delivery.endpoint_id).execute())
        assert webhooks.claim(delivery.id, now=now) is None
        assert webhooks.claim(delivery.id, now=now) is None
    after = row(delivery.id)
    assert (after.status, after.attempts, after.next_attempt_at, after.updated_at) == (
        "cancelled", 0, None, now)


def test_an_endpoint_with_no_secret_left_is_treated_as_deleted(ledger):
    delivery = a_delivery(ledger)
    with db.connection():
        (WebhookEndpoint.update(secret="").where(WebhookEndpoint.id == delivery.endpoint_id)
         .execute())
        assert webhooks.claim(delivery.id, now=delivery.next_attempt_at) is None
    assert row(delivery.id).status == "cancelled"


def test_deleting_the_endpoint_leaves_nothing_to_claim(ledger):
    delivery = a_delivery(ledger)
    with db.connection():
        assert webhooks.delete_endpoint(ledger, delivery.endpoint_id)
        assert webhooks.claim(delivery.id, now=delivery.next_attempt_at) is None
    after = row(delivery.id)
    assert (after.status, after.attempts, after.next_attempt_at) == ("cancelled", 0, None)


def test_a_claim_waiting_on_an_endpoint_being_deleted_claims_nothing(ledger_pg):
    # the delete holds the delivery's row (its cancel) when the claim comes: the claim waits
    # for the delete's commit, then finds the delivery cancelled
    delivery = a_delivery(ledger_pg)
    deleting, result = threading.Event(), []

    def delete_slowly():
        with db.connection(), db.write_transaction():
            (WebhookEndpoint.update(deleted_at=delivery.next_attempt_at, secret="")
             .where(WebhookEndpoint.id == delivery.endpoint_id).execute())
            (WebhookDelivery.update(status="cancelled", next_attempt_at=None)
             .where(WebhookDelivery.id == delivery.id).execute())
            deleting.set()
            claimer.join(0.5)
            assert claimer.is_alive()  # waiting on the row lock

    def claim():
        deleting.wait(10)
        with db.connection():
            result.append(webhooks.claim(delivery.id, now=delivery.next_attempt_at))

    claimer = threading.Thread(target=claim)
    claimer.start()
    delete_slowly()
    claimer.join(10)
    assert result == [None]
    after = row(delivery.id)
    assert (after.status, after.attempts, after.next_attempt_at) == ("cancelled", 0, None)


def test_on_postgresql_a_claim_inside_a_callers_transaction_rolls_back_with_it(ledger_pg):
    delivery = a_delivery(ledger_pg)
    with db.connection():
        with pytest.raises(RuntimeError):
            with db.write_transaction():
                assert webhooks.claim(delivery.id, now=delivery.next_attempt_at).attempt == 1
                raise RuntimeError("the caller failed")
    assert row(delivery.id).attempts == 0
