"""Callbacks arriving together are stored by one INSERT and one commit on PostgreSQL
(``ledger.inbox.GroupCommit``): each caller still gets its own row's seq, only once that row
is committed, and its own error when it was not; nothing is stored half or twice."""
from __future__ import annotations

import json
import threading

import pytest

from ledger import db, inbox
from ledger.models import Callback
from tests.waiting import wait_until


def body(n: int) -> bytes:
    return json.dumps({"Body": {"stkCallback": {
        "MerchantRequestID": f"m{n}", "CheckoutRequestID": f"ws_CO_GROUP_{n}",
        "ResultCode": 1032, "ResultDesc": "Request cancelled by user"}}}).encode()


def rows() -> dict[int, str]:
    with db.connection():
        return {c.seq: c.checkout_request_id for c in Callback.select()}


def held_then_written_together(group, calls: list) -> list:
    """Run every ``calls[i]()`` in its own thread while ``group`` is kept busy, so that all of
    them wait for the same next statement; then let it go. Results (or errors), by call."""
    results = [None] * len(calls)
    with group._lock:
        group._writing = True          # as if a statement were on its way

    def run(i):
        with db.connection():
            try:
                results[i] = calls[i]()
            except Exception as exc:  # noqa: BLE001 - checked by the test
                results[i] = exc
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    wait_until(lambda: len(group._pending) == len(calls), timeout=10,
               message="every caller to wait for the statement")
    with group._lock:
        group._writing = False
        group._written.notify_all()
    for t in threads:
        t.join(30)
    return results


@pytest.fixture
def statements(monkeypatch):
    """The batches written, by size."""
    sizes = []
    write = inbox._write

    def counting(batch):
        sizes.append(len(batch))
        return write(batch)
    monkeypatch.setattr(inbox, "_write", counting)
    return sizes


def test_callbacks_waiting_together_are_one_statement_and_each_gets_its_own_row(
        ledger_pg, statements):
    calls = [lambda n=n: inbox.store_callback(body(n), "196.201.214.200")[0].seq
             for n in range(6)]
    seqs = held_then_written_together(inbox.group_commit, calls)
    assert statements == [6]
    assert len(set(seqs)) == 6
    assert rows() == {seq: f"ws_CO_GROUP_{n}" for n, seq in enumerate(seqs)}


def test_a_row_the_database_refuses_fails_alone_and_the_others_are_stored_once(
        ledger_pg, statements):
    refused = "x" * 65                 # remote_addr is varchar(64): the statement fails
    calls = [lambda n=n: inbox.store_callback(body(n), refused if n == 1 else "10.0.0.1")[0].seq
             for n in range(3)]
    first, error, third = held_then_written_together(inbox.group_commit, calls)
    assert statements == [3]           # one batch, then each row again on its own
    assert isinstance(error, Exception)
    assert rows() == {first: "ws_CO_GROUP_0", third: "ws_CO_GROUP_2"}


def test_when_no_row_can_be_stored_every_caller_gets_the_error_and_nothing_is_stored(
        ledger_pg):
    with db.connection():
        db.database.execute_sql("ALTER TABLE callback RENAME TO callback_away")
    try:
        calls = [lambda n=n: inbox.store_callback(body(n), None) for n in range(4)]
        results = held_then_written_together(inbox.group_commit, calls)
    finally:
        with db.connection():
            db.database.execute_sql("ALTER TABLE callback_away RENAME TO callback")
    assert all(isinstance(r, Exception) for r in results)
    assert rows() == {}


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
    assert rows() == {seq: f"ws_CO_GROUP_{n}" for n, seq in seqs.items()}


def test_a_nul_in_a_callback_is_stored_replaced_not_refused(ledger_pg):
    with db.connection():
        row, parsed = inbox.store_callback(b'{"Body": \x00}', None)
        weird, parsed_weird = inbox.store_callback(
            json.dumps({"Body": {"stkCallback": {"CheckoutRequestID": "ws_CO_\x00",
                                                 "ResultCode": 0}}}).encode(), None)
        assert parsed is None and parsed_weird is not None
        assert Callback.get_by_id(row.seq).body == '{"Body": \ufffd}'
        assert Callback.get_by_id(weird.seq).checkout_request_id == "ws_CO_\ufffd"


def test_when_no_connection_can_be_had_every_caller_gets_that_error(ledger_pg, monkeypatch):
    import contextlib

    import peewee

    @contextlib.contextmanager
    def server_gone():
        raise peewee.OperationalError("could not connect to server")
        yield
    monkeypatch.setattr(inbox, "connection", server_gone)
    calls = [lambda n=n: inbox.store_callback(body(n), None) for n in range(3)]
    results = held_then_written_together(inbox.group_commit, calls)
    # the error the view answers 503 for (Daraja retries), as before the group commit
    assert [type(r) for r in results] == [peewee.OperationalError] * 3
    assert rows() == {}
