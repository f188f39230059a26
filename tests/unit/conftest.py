"""Unit-test fixtures: SQLite ledger, StubBroker and stub worker, the app's test client."""
from __future__ import annotations

import dataclasses

import dramatiq
import fakeredis
import pytest
from dramatiq.brokers.stub import StubBroker

import settings as settings_module
import workers  # noqa: F401  (configures itself on import: do it before any fixture binds)
from ledger import accounts, db, migrate
from workers import broker as worker_broker

CALLBACK_TOKEN = "c0ffee" * 6


@pytest.fixture
def settings(tmp_path):
    return dataclasses.replace(
        settings_module.load({"DARAJA_CALLBACK_TOKEN": CALLBACK_TOKEN}),
        database_url=f"sqlite:///{tmp_path}/ledger.db",
        redis_url="redis://127.0.0.1:9/0")


@pytest.fixture
def database(settings):
    database = db.bind(settings.database_url)
    with db.connection():
        migrate.upgrade()
    yield database
    if not database.is_closed():
        database.close()


@pytest.fixture
def stub_broker():
    broker = worker_broker.install(StubBroker(middleware=worker_broker.dramatiq_middleware()))
    broker.emit_after("process_boot")
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def stub_worker(stub_broker):
    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()


def FakeRedis():  # noqa: N802  (stands where a client class would)
    """An in-process Redis with Lua, so that every endpoint (/metrics' queue depths too) works."""
    return fakeredis.FakeRedis()


@pytest.fixture
def app(settings, database, stub_broker):
    from app import create_app
    return create_app({"SETTINGS": settings, "BROKER": stub_broker, "REDIS": FakeRedis(),
                       "BIND_DATABASE": False, "TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def account(database):
    with db.connection():
        acct, key = accounts.create_account("test")
    return {"id": acct.id, "key": key, "auth": {"Authorization": f"Bearer {key}"}}


@pytest.fixture
def other_account(database):
    with db.connection():
        acct, key = accounts.create_account("other")
    return {"id": acct.id, "key": key, "auth": {"Authorization": f"Bearer {key}"}}


# The workers' tasks against an in-process Daraja simulator (tests/unit/stk_support.py).
from tests.unit.stk_support import account_id, daraja_sim, fake_redis, stk  # noqa: E402,F401
