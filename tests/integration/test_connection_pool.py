"""The PostgreSQL connection pool: no round trip for a connection given back a moment ago,
a check for one that sat idle, and a broken one never handed out twice."""
import time

import psycopg2

from ledger import db


def backend_pid(database):
    return database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]


def terminate(postgres_server, pid):
    conn = psycopg2.connect(host=postgres_server.host, port=postgres_server.port,
                            user="topup", dbname="topup")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    conn.close()


def test_a_connection_given_back_a_moment_ago_is_handed_out_without_a_round_trip(
        postgres_server, monkeypatch):
    database = db.open_database(postgres_server.url)
    database.connect()
    first = backend_pid(database)
    database.close()
    pings = []
    monkeypatch.setattr(type(database).__mro__[1], "_is_closed",
                        lambda self, conn: pings.append(conn) or False)

    database.connect()
    assert backend_pid(database) == first
    database.close()

    assert pings == []
    database.close_all()


def test_a_connection_the_server_dropped_while_it_sat_idle_is_replaced(
        postgres_server, monkeypatch):
    monkeypatch.setattr(db.RecheckingPool, "RECHECK_IDLE_S", 0.05)
    database = db.open_database(postgres_server.url)
    database.connect()
    dropped = backend_pid(database)
    database.close()
    terminate(postgres_server, dropped)
    time.sleep(0.2)

    database.connect()
    assert backend_pid(database) != dropped
    database.close()
    database.close_all()


def test_a_connection_that_broke_in_use_is_not_given_out_again(postgres_server):
    database = db.open_database(postgres_server.url)
    database.connect()
    broken = backend_pid(database)
    terminate(postgres_server, broken)
    try:
        backend_pid(database)
    except Exception:  # noqa: BLE001 - the server hung up: OperationalError or InterfaceError
        pass
    database.close()

    database.connect()
    assert backend_pid(database) != broken
    database.close()
    database.close_all()
