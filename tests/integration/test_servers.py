"""The test-server helpers start real servers that keep their data the way production needs.

Restarts and kills run on private servers, never on the shared session ones.
"""
from __future__ import annotations

import socket
import uuid

import psycopg2
import pytest
import redis

from topupctl.devservers import PostgresServer, RedisServer, ServerStartError


def unique_name() -> str:
    return "t_" + uuid.uuid4().hex[:12]


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def scalar(url: str, sql: str, *params):
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def private_redis(redis_server, tmp_path):
    # Asking for redis_server applies the skip-or-fail policy of conftest.py.
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.close()


@pytest.fixture
def private_postgres(postgres_server, tmp_path):
    server = PostgresServer(tmp_path / "postgres").start()
    yield server
    server.close()


def test_tests_in_this_folder_are_marked_integration(request):
    assert request.node.get_closest_marker("integration") is not None


def test_redis_answers_ping_with_broker_settings(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.port not in (6379, 5432)
    assert client.ping() is True
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert client.config_get("save") == {"save": ""}
    client.close()


def test_a_redis_write_survives_a_restart_on_the_same_port(private_redis):
    port, key = private_redis.port, unique_name()
    client = redis.Redis.from_url(private_redis.url)
    client.rpush(key, "message-1", "message-2")
    client.close()

    private_redis.restart()

    assert private_redis.port == port
    client = redis.Redis.from_url(private_redis.url)
    assert client.lrange(key, 0, -1) == [b"message-1", b"message-2"]
    client.close()


def test_redis_recovers_after_kill_and_restart(private_redis):
    key = unique_name()
    client = redis.Redis.from_url(private_redis.url)
    client.set(key, "before the crash")  # written to the AOF before the reply (everysec)
    client.close()

    private_redis.kill()
    assert not private_redis.running and not port_is_open(private_redis.port)
    private_redis.restart()

    client = redis.Redis.from_url(private_redis.url)
    assert client.ping() is True
    assert client.get(key) == b"before the crash"
    client.close()


def test_postgres_accepts_a_transaction(postgres_server):
    assert postgres_server.url == f"postgresql://topup@127.0.0.1:{postgres_server.port}/topup"
    assert postgres_server.port not in (6379, 5432)
    assert scalar(postgres_server.url, "SELECT current_database()") == "topup"
    assert scalar(postgres_server.url, "SHOW fsync") == "on"
    assert scalar(postgres_server.url, "SHOW max_connections") == "200"

    url = postgres_server.create_database(unique_name())
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE wallet (id int PRIMARY KEY, balance bigint NOT NULL)")
        cur.execute("INSERT INTO wallet VALUES (1, 100)")
        cur.execute("UPDATE wallet SET balance = balance + 50 WHERE id = 1")
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO wallet VALUES (2, 0)")
        conn.rollback()
    conn.close()
    assert scalar(url, "SELECT balance FROM wallet WHERE id = 1") == 150
    assert scalar(url, "SELECT count(*) FROM wallet") == 1


def test_create_database_gives_an_isolated_empty_database(postgres_server):
    first_url = postgres_server.create_database(unique_name())
    conn = psycopg2.connect(first_url)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE only_here (x int)")
    conn.close()

    second_url = postgres_server.create_database(unique_name())

    user_tables = ("SELECT count(*) FROM pg_tables "
                   "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
    assert second_url != first_url
    assert scalar(second_url, user_tables) == 0
    assert scalar(second_url, "SELECT to_regclass('only_here') IS NULL") is True
    assert scalar(postgres_server.url, "SELECT to_regclass('only_here') IS NULL") is True
    assert scalar(first_url, "SELECT to_regclass('only_here') IS NOT NULL") is True


def test_a_committed_postgres_row_survives_a_restart(private_postgres):
    port = private_postgres.port
    conn = psycopg2.connect(private_postgres.url)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE ledger (ref text PRIMARY KEY)")
        cur.execute("INSERT INTO ledger VALUES ('ABC123')")
    # a connection left open must not block the shutdown
    private_postgres.restart()
    conn.close()

    assert private_postgres.port == port
    assert scalar(private_postgres.url, "SELECT ref FROM ledger") == "ABC123"


def test_postgres_recovers_after_kill_and_restart(private_postgres):
    conn = psycopg2.connect(private_postgres.url)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE ledger (ref text PRIMARY KEY)")
        cur.execute("INSERT INTO ledger VALUES ('committed')")
    cur = conn.cursor()
    cur.execute("INSERT INTO ledger VALUES ('in flight')")  # never committed

    private_postgres.kill()
    assert not private_postgres.running and not port_is_open(private_postgres.port)
    conn.close()
    private_postgres.restart()

    assert scalar(private_postgres.url, "SELECT array_agg(ref) FROM ledger") == ["committed"]


def test_a_server_that_cannot_start_raises_with_its_log(redis_server, tmp_path):
    server = RedisServer(tmp_path / "broken")
    server.dir = tmp_path / "not-a-directory"
    server.dir.write_text("a file where redis expects a directory\n")

    with pytest.raises(ServerStartError) as raised:
        server.start()

    assert str(server.log_path) in str(raised.value)
    assert "exited with code" in str(raised.value)
    assert not server.running
