"""Prebuilt INSERTs (``ledger.prebuilt``) write what Peewee's own INSERT writes, on SQLite and
on PostgreSQL, and fail as it fails."""
from __future__ import annotations

import datetime as dt

import peewee
import pytest

from ledger import db, prebuilt
from ledger.models import Callback, TopUpEvent

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
