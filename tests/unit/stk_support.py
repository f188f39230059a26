"""Fixtures for unit tests of the workers' tasks: the ledger, an in-process simulator
answering over real HTTP, a real Daraja client, and fakeredis for the phone locks.

Callbacks from the simulator go to a closed port (they fail, and are recorded as failed by
the simulator): a test that wants a callback builds one and stores it itself. The fixtures
(`daraja_sim`, `fake_redis`, `stk`, `account_id`) are offered to every unit test by conftest.py.
"""
from __future__ import annotations

import dataclasses
import json

import fakeredis
import pytest
import requests

import bootstrap
from daraja import DarajaClient, MemoryTokenCache
from ledger import accounts, db, topups
from ledger.models import TopUp, TopUpEvent
from simulator.server import SimulatorConfig, SimulatorServer


@pytest.fixture
def daraja_sim():
    sim = SimulatorServer(host="127.0.0.1", port=0,
                          config=SimulatorConfig(callback_delay_s=0.0, callback_timeout_s=0.5))
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def fake_redis():
    return fakeredis.FakeRedis()


@pytest.fixture
def stk(settings, database, daraja_sim, fake_redis, stub_broker):
    """What a worker has: settings, a Daraja client talking to the simulator, Redis."""
    configured = dataclasses.replace(settings, daraja_base_url=daraja_sim.url,
                                     public_base_url="http://127.0.0.1:9")
    daraja = DarajaClient(dataclasses.replace(bootstrap.daraja_config(configured),
                                              read_timeout=0.5),
                          token_cache=MemoryTokenCache())
    return bootstrap.configure("tests", configured, broker=stub_broker, redis=fake_redis,
                               daraja=daraja, database=False, logging=False)


@pytest.fixture
def account_id(database):
    with db.connection():
        return accounts.create_account("test")[0].id


def new_topup(account_id: str, phone: str, amount: int = 100) -> str:
    with db.connection():
        topup, _ = topups.create_topup(account_id, amount=amount, phone=phone, reference=None,
                                       metadata={})
    return topup.id


def row(topup_id: str) -> TopUp:
    with db.connection():
        return TopUp.get(TopUp.id == topup_id)


def kinds(topup_id: str) -> list[str]:
    with db.connection():
        return [e.kind for e in TopUpEvent.select().where(TopUpEvent.topup == topup_id)
                .order_by(TopUpEvent.seq)]


def sim(daraja_sim, method: str, path: str, body: dict | None = None):
    response = requests.request(method, daraja_sim.url + path, json=body, timeout=5)
    response.raise_for_status()
    return response.json()


def pushes_received(daraja_sim) -> int:
    return sim(daraja_sim, "GET", "/__sim/stats")["stkpush"]


def success_callback(checkout_request_id: str, amount: int = 100, receipt: str = "FORGED0001",
                     phone: int = 254712345678) -> bytes:
    return json.dumps({"Body": {"stkCallback": {
        "MerchantRequestID": "m-1", "CheckoutRequestID": checkout_request_id, "ResultCode": 0,
        "ResultDesc": "The service request is processed successfully.",
        "CallbackMetadata": {"Item": [
            {"Name": "Amount", "Value": amount}, {"Name": "MpesaReceiptNumber", "Value": receipt},
            {"Name": "Balance"}, {"Name": "TransactionDate", "Value": 20261128100000},
            {"Name": "PhoneNumber", "Value": phone}]}}}}).encode()
