"""The callback inbox on PostgreSQL (``ledger.inbox.store_callback``): a callback is
committed, for every other connection, by the time it returns; callbacks racing each get
their own row; a NUL is stored replaced instead of failing the INSERT; a database that cannot
be reached raises the error the endpoint answers 503 for, and a connection the server
dropped is replaced."""
from __future__ import annotations

import json
import threading

import peewee
import psycopg2
import pytest

from ledger import db, inbox
from ledger.models import Callback


def body(n: int) -> bytes:
    return json.dumps({"Body": {"stkCallback": {
        "MerchantRequestID": f"m{n}", "CheckoutRequestID": f"ws_CO_INBOX_{n}",
        "ResultCode": 1032, "ResultDesc": "Request cancelled by user"}}}).encode()


def rows() -> dict[int, str]:
    with db.connection():
        return {c.seq: c.checkout_request_id for c in Callback.select()}


def test_a_stored_callback_is_committed_when_store_callback_returns(ledger_pg):
    stored, parsed = inbox.store_callback(body(1), "196.201.214.200")
    assert parsed.checkout_request_id == "ws_CO_INBOX_1"
    database = db.database.obj
    other = psycopg2.connect(dbname=database.database, **database.connect_params)
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT checkout_request_id, remote_addr, applied_at FROM callback"
                           " WHERE seq = %s", (stored.seq,))
            assert cursor.fetchall() == [("ws_CO_INBOX_1", "196.201.214.200", None)]
    finally:
        other.close()


def test_many_callbacks_racing_each_get_their_own_committed_row(ledger_pg):
    seqs: dict[int, int] = {}
    start = threading.Barrier(8)

    def run(t):
        start.wait()
        with db.connection():
            for i in range(25):
                n = t * 100 + i
                seqs[n] = inbox.store_callback(body(n), None)[0].seq
    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(seqs) == 200 and len(set(seqs.values())) == 200
    assert rows() == {seq: f"ws_CO_INBOX_{n}" for n, seq in seqs.items()}


def test_a_nul_in_a_callback_is_stored_replaced_not_refused(ledger_pg):
    with db.connection():
        row, parsed = inbox.store_callback(b'{"Body": \x00}', None)
        weird, parsed_weird = inbox.store_callback(
            json.dumps({"Body": {"stkCallback": {"CheckoutRequestID": "ws_CO_\x00",
                                                 "ResultCode": "\x00"}}}).encode(), None)
        assert parsed is None and parsed_weird is not None
        assert Callback.get_by_id(row.seq).body == '{"Body": \ufffd}'
        stored_weird = Callback.get_by_id(weird.seq)
        assert (stored_weird.checkout_request_id, stored_weird.result_code) == (
            "ws_CO_\ufffd", "\ufffd")


def test_a_callback_is_stored_when_the_kept_connection_was_dropped_by_the_server(ledger_pg):
    # a database restart drops every connection the API threads keep between requests
    inbox.store_callback(body(1), None)
    with db.database.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    database = db.database.obj
    other = psycopg2.connect(dbname=database.database, **database.connect_params)
    other.autocommit = True
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        other.close()
    stored, _ = inbox.store_callback(body(2), None)
    assert rows()[stored.seq] == "ws_CO_INBOX_2"


def test_when_no_connection_can_be_had_the_caller_gets_that_error(ledger_pg):
    from topupctl.devservers import find_free_port
    db.discard_connection()
    db.bind(f"postgresql://topup@127.0.0.1:{find_free_port()}/nothing_listens_here")
    with pytest.raises(peewee.OperationalError):   # the view answers 503
        inbox.store_callback(body(1), None)
