"""Unit-test fixtures: every test runs in a process configured for it by the bootstrap
(``gateway``): its own settings and ledger, the StubBroker, fakeredis. Then the stub worker,
the app's test client, accounts.

The ledger is an SQLite file of the test's own; in a module marked ``both_databases``, each
test that uses it (``database``) runs on SQLite and again on PostgreSQL (tests/conftest.py)."""
from __future__ import annotations

import dramatiq
import fakeredis
import pytest
from dramatiq.brokers.stub import StubBroker

import bootstrap
import settings as settings_module
from ledger import accounts, db, migrate
from tests import databases
from workers import broker as worker_broker

CALLBACK_TOKEN = "c0ffee" * 6
# nothing listens there: a test that reaches for a real Redis fails at once
UNREACHABLE_REDIS = "redis://127.0.0.1:9/0"


@pytest.fixture
def settings(database_url):
    return settings_module.load({"DARAJA_CALLBACK_TOKEN": CALLBACK_TOKEN,
                                 "DATABASE_URL": database_url,
                                 "REDIS_URL": UNREACHABLE_REDIS})


@pytest.fixture
def stub_broker():
    broker = StubBroker(middleware=worker_broker.dramatiq_middleware())
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture(autouse=True)
def gateway(settings, stub_broker, fake_redis):
    """This process as a worker process has it, configured by the bootstrap for this test:
    the test's settings and ledger, the StubBroker with the actors declared on it, fakeredis,
    a Daraja client for the settings' base URL. Logging is pytest's."""
    configured = bootstrap.configure("tests", settings, broker=stub_broker, redis=fake_redis,
                                     logging=False)
    stub_broker.emit_after("process_boot")
    return configured


@pytest.fixture
def database(gateway):
    """The ledger the bootstrap bound, migrated, empty."""
    with db.connection():
        migrate.upgrade()
    database = db.database.obj
    yield database
    databases.close(database)


@pytest.fixture
def stub_worker(stub_broker, gateway):
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
