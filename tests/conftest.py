"""Test-wide setup. The environment is left as it is: importing the gateway configures nothing,
and each test configures this process itself, through the bootstrap, with settings of its own
(tests/unit/conftest.py, tests/integration/system.py). The processes the integration tests
start are configured the way users configure them: by their environment.

The ledger's tests run on both databases the gateway supports. ``database_url`` is where a
test's ledger lives: an SQLite file of its own, or, in a module marked ``both_databases``,
once on SQLite and once on the session's PostgreSQL, for each test that uses the ledger (the
``database`` fixture of tests/unit and of tests/integration). ``-m "not postgresql"`` leaves
the PostgreSQL runs out.

The real servers, ``redis_server`` and ``postgres_server``, are session-scoped (one
redis-server and one PostgreSQL cluster per test run, started on first use, stopped at the
end). Without redis-server or PostgreSQL on this machine the tests that need them are
skipped, unless ``TOPUP_REQUIRE_SERVERS=1`` (set by ``.ci/run``): then they fail, so CI never
passes by silently skipping them.
"""
from __future__ import annotations

import os

import pytest

from tests import databases
from topupctl.devservers import PostgresServer, RedisServer, servers_available

# Every log line written during the suite is checked for phone numbers and secrets.
pytest_plugins = ("tests.log_audit",)


def pytest_generate_tests(metafunc):
    """A test of a module marked ``both_databases`` that uses the ledger runs on each."""
    if ("database" in metafunc.fixturenames
            and metafunc.definition.get_closest_marker("both_databases")):
        metafunc.parametrize("database_url", [
            pytest.param(databases.SQLITE, id=databases.SQLITE),
            pytest.param(databases.POSTGRESQL, id=databases.POSTGRESQL,
                         marks=pytest.mark.postgresql),
        ], indirect=True)


def require_servers() -> None:
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
    require_servers()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A started :class:`topupctl.devservers.PostgresServer`; ``.url`` is the ``topup`` database,
    ``.create_database(name)`` gives an isolated one."""
    require_servers()
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_ledger(postgres_server):
    """The URL of the database the ledger's tests share on the session's PostgreSQL: each test
    finds it empty (:func:`tests.databases.empty`), which takes a fraction of the time that
    creating and migrating a database of its own would."""
    return postgres_server.create_database("ledger_tests")


@pytest.fixture
def database_url(request, tmp_path):
    """Where this test's ledger lives, empty: an SQLite file of its own, or (parametrised by
    ``both_databases``) the session's PostgreSQL ledger."""
    kind = getattr(request, "param", databases.SQLITE)
    if kind == databases.SQLITE:
        return f"sqlite:///{tmp_path}/ledger.db"
    url = request.getfixturevalue("postgres_ledger")
    databases.empty(url)
    return url
