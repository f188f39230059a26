"""Real servers for the integration tests: ``redis_server`` and ``postgres_server``.

Both are session-scoped (one redis-server and one PostgreSQL cluster per test run, started on
first use, stopped at the end). Tests that need a database of their own call
``postgres_server.create_database(name)``; tests that restart or kill a server start a
private one with :mod:`topupctl.devservers` instead of disturbing the shared ones.

Without redis-server or PostgreSQL on this machine the tests are skipped, unless
``TOPUP_REQUIRE_SERVERS=1`` (set by ``.ci/run``): then they fail, so CI never passes by
silently skipping them.

Every test collected under this folder is marked ``integration`` (``-m "not integration"``
runs the rest).
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from tests.integration.system import configure_test_process
from topupctl.devservers import PostgresServer, RedisServer, servers_available

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


def _require_servers() -> None:
    available, reason = servers_available()
    if available:
        return
    if os.environ.get("TOPUP_REQUIRE_SERVERS") == "1":
        pytest.fail(f"TOPUP_REQUIRE_SERVERS=1 but servers are unavailable: {reason}",
                    pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A started :class:`topupctl.devservers.RedisServer` (AOF everysec, noeviction); ``.url``."""
    _require_servers()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A started :class:`topupctl.devservers.PostgresServer`; ``.url`` is the ``topup`` database,
    ``.create_database(name)`` gives an isolated one."""
    _require_servers()
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server
    server.close()


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


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    """A migrated ledger bound in this process, on SQLite and then on the session's
    PostgreSQL, with one account ("acme"), opened on this thread: the account."""
    from ledger import accounts, db, migrate
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/ledger.db"
    else:
        url = request.getfixturevalue("postgres_server").create_database(
            f"ledger_{next(_ledgers)}")
    configure_test_process(url)
    database = db.database.obj
    with db.connection():
        migrate.upgrade()
        account, _ = accounts.create_account("acme")
        yield account
    if hasattr(database, "close_all"):
        database.close_all()


# The gateway's fixtures (real processes against the servers above), for every module here,
# and a real browser.
from tests.integration.browser import chrome  # noqa: E402,F401
from tests.integration.system import pg_system, simulator  # noqa: E402,F401
