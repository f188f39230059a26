"""The PostgreSQL connection pool: a connection given back is used again, one the server
dropped while it sat in the pool is replaced, and a broken one is never handed out twice."""
import psycopg2

from ledger import db
from tests.waiting import wait_until


def backend_pid(database):
    return database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]


def admin_connection(postgres_server):
    conn = psycopg2.connect(host=postgres_server.host, port=postgres_server.port,
                            user="topup", dbname="topup")
    conn.autocommit = True
    return conn


def wait_until_backend_ended(postgres_server, pid):
    conn = admin_connection(postgres_server)
    try:
        with conn.cursor() as cur:
            def ended():
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                return cur.fetchone()[0] == 0

            wait_until(ended, timeout=10, message=f"backend {pid} to end")
    finally:
        conn.close()


def terminate(postgres_server, pid):
    """End a backend, as a server restart would, and wait until the server has let it go."""
    conn = admin_connection(postgres_server)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        conn.close()
    wait_until_backend_ended(postgres_server, pid)


def test_a_connection_given_back_is_used_again(postgres_server):
    database = db.open_database(postgres_server.url)
    database.connect()
    first = backend_pid(database)
    database.close()

    database.connect()
    assert backend_pid(database) == first
    database.close()
    database.close_all()


def test_a_connection_the_server_dropped_while_it_sat_idle_is_replaced(postgres_server):
    database = db.open_database(postgres_server.url)
    database.connect()
    dropped = backend_pid(database)
    database.close()
    terminate(postgres_server, dropped)

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


def test_a_discarded_connection_is_not_pooled_and_the_next_query_connects_afresh(postgres_server):
    bound_before = db.database.obj
    database = db.open_database(postgres_server.url)
    db.database.initialize(database)
    try:
        database.connect()
        discarded = backend_pid(database)
        db.discard_connection()
        assert database.is_closed()
        wait_until_backend_ended(postgres_server, discarded)   # closed, not kept in the pool

        database.connect()
        assert backend_pid(database) != discarded
        database.close()
    finally:
        database.close_all()
        db.database.initialize(bound_before)
