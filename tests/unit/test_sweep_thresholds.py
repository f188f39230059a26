"""How long the scheduler lets a row sit before re-driving it: today's constants by default,
shorter through SWEEP_* settings (recovery tests), refused by name when malformed."""
import datetime as dt

import pytest

import settings
from ledger import db, inbox
from ledger.models import Callback, utcnow
from tests.messages import taken
from workers import scheduler, sweeps

pytestmark = pytest.mark.both_databases

TOKEN = {"DARAJA_CALLBACK_TOKEN": "ab" * 16}


def test_by_default_the_thresholds_are_the_sweeps_own_constants():
    assert sweeps.Thresholds.from_settings(settings.load(TOKEN)) == sweeps.Thresholds(
        unsent_push_after=sweeps.UNSENT_PUSH_AFTER, released_push_after=sweeps.RELEASED_PUSH_AFTER,
        abandoned_sending_after=sweeps.ABANDONED_SENDING_AFTER,
        unapplied_callback_after=sweeps.UNAPPLIED_CALLBACK_AFTER,
        query_overdue_grace=sweeps.QUERY_OVERDUE_GRACE,
        redrive_every=dt.timedelta(seconds=scheduler.REDRIVE_EVERY_S))


def test_each_threshold_is_read_from_its_setting():
    loaded = settings.load({**TOKEN, "SWEEP_UNSENT_PUSH_AFTER_S": "1",
                            "SWEEP_RELEASED_PUSH_AFTER_S": "2", "SWEEP_ABANDONED_PUSH_AFTER_S": "3",
                            "SWEEP_UNAPPLIED_CALLBACK_AFTER_S": "4", "SWEEP_QUERY_GRACE_S": "5",
                            "SWEEP_REDRIVE_EVERY_S": "0.5"})
    assert sweeps.Thresholds.from_settings(loaded) == sweeps.Thresholds(
        *(dt.timedelta(seconds=s) for s in (1, 2, 3, 4, 5, 0.5)))


@pytest.mark.parametrize("name", ["SWEEP_UNAPPLIED_CALLBACK_AFTER_S", "SWEEP_REDRIVE_EVERY_S"])
@pytest.mark.parametrize("value", ["soon", "-1"])
def test_a_malformed_threshold_is_refused_by_name(name, value):
    with pytest.raises(settings.ConfigError, match=name):
        settings.load({**TOKEN, name: value})


def test_a_shorter_threshold_re_drives_a_callback_sooner(database, stub_broker):
    with db.connection():
        stored, _ = inbox.store_callback(b'{"Body": {"stkCallback": {"CheckoutRequestID": '
                                         b'"ws_CO_1", "ResultCode": 1032}}}', None)
        Callback.update(received_at=utcnow() - dt.timedelta(seconds=5)).execute()
    assert scheduler.sweep_once(86400)["unapplied_callbacks"] == 0
    short = sweeps.Thresholds(unapplied_callback_after=dt.timedelta(seconds=2))
    assert scheduler.sweep_once(86400, thresholds=short)["unapplied_callbacks"] == 1
    queued = taken(stub_broker, "callbacks")
    assert [(m.actor_name, m.args) for m in queued] == [("apply_callback", (stored.seq,))]
