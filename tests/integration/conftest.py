"""The integration tests: the gateway's real processes against real servers
(``redis_server`` and ``postgres_server``, session-scoped, in tests/conftest.py). Tests that
need a database of their own call ``postgres_server.create_database(name)``; tests that
restart or kill a server start a private one with :mod:`topupctl.devservers` instead of
disturbing the shared ones.

``database`` and ``ledger`` bind the ledger in this process, as the unit tests' fixtures do,
on the test's ``database_url``: in a module marked ``both_databases``, SQLite and then the
session's PostgreSQL.

Every test collected under this folder is marked ``integration`` (``-m "not integration"``
runs the rest).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests import databases
from tests.integration.system import configure_test_process

INTEGRATION_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    # This hook sees every collected item of the run, not only this folder's.
    for item in items:
        if Path(item.path).resolve().is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A browser test that fails leaves a screenshot beside its report (tests/integration/
    browser.py), and its report says where."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        from tests.integration.browser import screenshot_of_failure
        path = screenshot_of_failure(item)
        if path is not None:
            report.sections.append(("browser screenshot", str(path)))


_ledgers = itertools.count()


@pytest.fixture
def ledger_pg(postgres_server):
    """A migrated ledger of its own on the session's PostgreSQL, bound in this process, with
    one account: its id."""
    from ledger import accounts, db, migrate
    configure_test_process(postgres_server.create_database(f"ledger_{next(_ledgers)}"))
    database = db.database.obj
    with db.connection():
        migrate.upgrade()
        account, _ = accounts.create_account("hot")
    yield account.id
    database.close_all()


@pytest.fixture
def database(database_url):
    """The ledger at ``database_url`` bound in this process, migrated, empty."""
    from ledger import db, migrate
    configure_test_process(database_url)
    database = db.database.obj
    with db.connection():
        migrate.upgrade()
    yield database
    databases.close(database)


@pytest.fixture
def ledger(database):
    """The ledger with one account ("acme"), opened on this thread: the account."""
    from ledger import accounts, db
    with db.connection():
        account, _ = accounts.create_account("acme")
        yield account


# The gateway's fixtures (real processes against the servers above), for every module here,
# and a real browser.
from tests.integration.browser import chrome  # noqa: E402,F401
from tests.integration.system import pg_system, simulator  # noqa: E402,F401
