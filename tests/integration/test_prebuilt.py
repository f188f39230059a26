"""Prebuilt statements (``ledger.prebuilt``) write and read what Peewee's own queries write and
read, on SQLite and on PostgreSQL, and fail as they fail."""
from __future__ import annotations

import datetime as dt

import peewee
import pytest

from ledger import db, prebuilt
from ledger.models import Callback, TopUpEvent
from ledger.prebuilt import param

pytestmark = pytest.mark.both_databases

CALLBACK = prebuilt.Insert(Callback, Callback.received_at, Callback.remote_addr, Callback.body,
                           Callback.checkout_request_id, Callback.result_code,
                           Callback.well_formed, Callback.applied_at, Callback.outcome)
ROW = {"received_at": dt.datetime(2026, 12, 7, 15, 4, 5, 123456), "remote_addr": "127.0.0.1",
       "body": '{"Body": "é"}', "checkout_request_id": "ws_CO_PRE", "result_code": "0",
       "well_formed": False, "applied_at": None, "outcome": None}
COLUMNS = [field.name for field in CALLBACK.fields]


def stored(seq: int) -> dict:
    row = Callback.select().where(Callback.seq == seq).dicts().get()
    return {column: row[column] for column in COLUMNS}


def test_a_prebuilt_insert_writes_the_row_peewee_writes_and_returns_its_key(ledger):
    with db.connection():
        mine = CALLBACK.execute(*ROW.values())
        peewees = Callback.insert(**ROW).execute()
        again = CALLBACK.execute(*{**ROW, "outcome": "applied"}.values())
        assert len({mine, peewees, again}) == 3
        assert stored(mine) == stored(peewees) == ROW
        assert stored(again)["outcome"] == "applied"


def test_a_prebuilt_insert_fails_as_peewee_does_and_inside_a_transaction_rolls_back(ledger):
    with db.connection():
        with pytest.raises(peewee.IntegrityError):   # topup_id names no top-up
            with db.write_transaction():
                CALLBACK.execute(*ROW.values())
                prebuilt.Insert(TopUpEvent, TopUpEvent.topup, TopUpEvent.kind,
                                TopUpEvent.detail, TopUpEvent.created_at).execute(
                    "tu_nobody", "requested", "{}", ROW["received_at"])
        assert Callback.select().count() == 0


def test_a_field_with_a_default_must_be_named(ledger):
    with pytest.raises(ValueError, match="default"):
        prebuilt.Insert(Callback, Callback.body).sql()


# a statement of each kind, with the values a call gives where param() stands
MARK = prebuilt.Statement(
    Callback.update(applied_at=param(Callback.applied_at), outcome=param(Callback.outcome))
    .where((Callback.checkout_request_id == param(Callback.checkout_request_id))
           & Callback.applied_at.is_null()))
MARKED = prebuilt.Statement(
    Callback.update(outcome=param(Callback.outcome))
    .where(Callback.seq == param(Callback.seq))
    .returning(Callback.seq, Callback.outcome))
SINCE = prebuilt.Statement(
    Callback.select(Callback.seq, Callback.received_at, Callback.well_formed)
    .where((Callback.received_at >= param(Callback.received_at, "since"))
           & (Callback.checkout_request_id == param(Callback.checkout_request_id)))
    .order_by(Callback.seq))


def test_a_statement_changes_and_reads_what_peewees_own_query_does(ledger):
    later = ROW["received_at"] + dt.timedelta(seconds=1)
    with db.connection():
        first = CALLBACK.execute(*ROW.values())
        second = CALLBACK.execute(*{**ROW, "received_at": later}.values())
        other = CALLBACK.execute(*{**ROW, "checkout_request_id": "ws_CO_OTHER"}.values())

        # a SELECT: its values back as Peewee reads them (a datetime, not SQLite's text)
        [(seq, received_at, well_formed)] = SINCE.rows(since=later,
                                                       checkout_request_id="ws_CO_PRE")
        assert (seq, received_at, well_formed) == (second, later, False)
        assert well_formed is False    # a bool, not SQLite's 0
        assert SINCE.first(since=later, checkout_request_id="ws_CO_NONE") is None
        assert SINCE.rows(since=ROW["received_at"], checkout_request_id="ws_CO_PRE") == list(
            Callback.select(Callback.seq, Callback.received_at, Callback.well_formed)
            .where(Callback.checkout_request_id == "ws_CO_PRE").order_by(Callback.seq).tuples())

        # an UPDATE: the rows it changed, and only those its WHERE names
        applied = dt.datetime(2026, 12, 7, 16, 0, 0, 1)
        assert MARK.rowcount(applied_at=applied, outcome="credited",
                             checkout_request_id="ws_CO_PRE") == 2
        assert MARK.rowcount(applied_at=applied, outcome="again",
                             checkout_request_id="ws_CO_PRE") == 0
        assert stored(first)["applied_at"] == stored(second)["applied_at"] == applied
        assert stored(other)["outcome"] is None

        # an UPDATE … RETURNING: what it wrote
        assert MARKED.first(outcome="quarantined", seq=other) == (other, "quarantined")
        assert MARKED.first(outcome="quarantined", seq=-1) is None


def test_a_statement_wants_exactly_its_values(ledger):
    with db.connection():
        with pytest.raises(TypeError, match="checkout_request_id"):
            SINCE.rows(since=ROW["received_at"])
        with pytest.raises(TypeError, match="surplus"):
            SINCE.rows(since=ROW["received_at"], checkout_request_id="x", surplus=1)


def test_a_statement_fails_as_peewee_does_and_inside_a_transaction_rolls_back(ledger):
    blank = prebuilt.Statement(Callback.update(body=param(Callback.body))
                               .where(Callback.seq == param(Callback.seq)))
    with db.connection():
        seq = CALLBACK.execute(*ROW.values())
        with pytest.raises(peewee.IntegrityError):   # a callback's body is NOT NULL
            with db.write_transaction():
                assert MARK.rowcount(applied_at=ROW["received_at"], outcome="x",
                                     checkout_request_id="ws_CO_PRE") == 1
                blank.rowcount(body=None, seq=seq)
        assert stored(seq)["outcome"] is None and stored(seq)["applied_at"] is None
