"""Helpers for the client-contract tests: money in a wallet the real way, and an app that may
send webhooks to 127.0.0.1 (as WEBHOOK_ALLOW_PRIVATE=1 allows in development)."""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import secrets

import pytest
from schemathesis.checks import (
    content_type_conformance, not_a_server_error, response_headers_conformance,
    response_schema_conformance, status_code_conformance,
)

from ledger import db, pushes, settlement, topups
import fakeredis

PHONE = "254712345678"
# What a fuzzed answer must be: no 5xx, and a status, media type, body and headers that the
# OpenAPI document gives for that operation.
FUZZ_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
               response_schema_conformance, response_headers_conformance]


def receipt() -> str:
    return "Q" + "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(9))


def pushed_topup(account_id: str, shillings: int) -> tuple[str, str]:
    """A top-up whose STK push Daraja accepted: (topup id, CheckoutRequestID)."""
    with db.connection():
        topup, _ = topups.create_topup(account_id, amount=shillings, phone=PHONE,
                                       reference=None, metadata={})
        pushes.claim_push(topup.id)
        checkout = "ws_CO_" + topup.id
        pushes.record_push_accepted(topup.id, checkout_request_id=checkout,
                                    merchant_request_id="m-" + topup.id, query_after_s=60)
    return topup.id, checkout


def credit(account_id: str, shillings: int) -> str:
    """Fund a wallet through a top-up M-Pesa confirmed; returns the top-up's id."""
    topup_id, checkout = pushed_topup(account_id, shillings)
    with db.connection():
        assert settlement.settle_success(checkout, amount_cents=shillings * 100, receipt=receipt(),
                                         phone=PHONE, source="callback") == "credited"
    return topup_id


def fail(account_id: str, shillings: int = 50) -> str:
    """A top-up Daraja says failed (the customer cancelled); returns its id."""
    topup_id, checkout = pushed_topup(account_id, shillings)
    with db.connection():
        assert settlement.settle_failure(checkout, "1032", "Request cancelled by user",
                                         source="callback") == "failed"
    return topup_id


def public_resolver(host, port):
    """DNS for tests: every name is a public address (no network in unit tests)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        return [ipaddress.ip_address("93.184.216.34")]


def make_app(settings, stub_broker, **config):
    from app import create_app
    return create_app({"SETTINGS": settings, "BROKER": stub_broker, "REDIS": fakeredis.FakeRedis(),
                       "BIND_DATABASE": False, "TESTING": True,
                       "RATELIMIT_STORAGE_URI": "memory://",
                       "WEBHOOK_RESOLVER": public_resolver, **config})


@pytest.fixture
def dev_settings(settings):
    """Settings as in development: webhooks may go to 127.0.0.1."""
    return dataclasses.replace(settings, webhook_allow_private=True)


@pytest.fixture
def dev_app(dev_settings, database, stub_broker):
    return make_app(dev_settings, stub_broker)


@pytest.fixture
def dev_client(dev_app):
    return dev_app.test_client()


def post_json(client, path, body, auth, **headers):
    return client.post(path, data=json.dumps(body), content_type="application/json",
                       headers={**auth, **headers})
