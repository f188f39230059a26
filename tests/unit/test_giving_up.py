"""Past STK_GIVE_UP_AFTER_S a top-up nobody could settle becomes `unknown`, never `failed`,
unless its push certainly never left; a late word from Daraja still settles it."""
import dataclasses
import datetime as dt

import pytest

import bootstrap
from ledger import db, inbox, pushes, settlement
from ledger.models import FAILED, PENDING, SUCCEEDED, UNKNOWN, TopUp, utcnow
from tests.unit.stk_support import kinds, new_topup, row, sim, success_callback
from workers import actors, sweeps, tasks

pytestmark = pytest.mark.both_databases


def pushed(stk, account_id, phone="254712345678") -> str:
    topup_id = new_topup(account_id, phone)
    with db.connection():
        assert tasks.push(topup_id, stk.daraja, query_after_s=60, redis=stk.redis)[0] == "sent"
    return topup_id


def age(topup_id, seconds):
    """Move the top-up's clock back, as if it had been waiting this long."""
    past = utcnow() - dt.timedelta(seconds=seconds)
    with db.connection():
        TopUp.update(created_at=past, pushed_at=past, push_started_at=past).where(
            TopUp.id == topup_id).execute()


def phone_locked(stk, phone) -> bool:
    return stk.redis.exists(f"topup:phone-lock:{phone}") == 1


def test_a_pushed_topup_unresolved_past_the_deadline_becomes_unknown_without_asking_again(
        stk, account_id, daraja_sim):
    topup_id = pushed(stk, account_id)
    assert phone_locked(stk, "254712345678")
    age(topup_id, 3601)
    with db.connection():
        assert tasks.query(topup_id, stk.daraja, give_up_after_s=3600, redis=stk.redis) == "gave_up"
    topup = row(topup_id)
    assert (topup.status, topup.failure_code) == (UNKNOWN, None)
    assert sim(daraja_sim, "GET", "/__sim/stats")["stkquery"] == 0
    assert not phone_locked(stk, "254712345678")   # the next top-up for that phone may go


def test_a_topup_whose_query_keeps_answering_an_undocumented_code_ends_unknown(
        stk, account_id):
    topup_id = pushed(stk, account_id, phone="254700000042")
    for _ in range(3):
        try:
            with db.connection():
                tasks.query(topup_id, stk.daraja, give_up_after_s=3600, redis=stk.redis)
        except tasks.AskAgainLater:
            pass
        assert row(topup_id).status == PENDING
    age(topup_id, 3601)
    with db.connection():
        assert tasks.query(topup_id, stk.daraja, give_up_after_s=3600, redis=stk.redis) == "gave_up"
    assert row(topup_id).status == UNKNOWN
    assert "failed" not in kinds(topup_id)


def test_the_query_chain_of_an_undocumented_code_runs_until_it_gives_up_as_unknown(
        stk, account_id, stub_broker, stub_worker):
    # the actor's own retries, with a short deadline and short delays
    bootstrap.configure("tests", dataclasses.replace(stk.settings, stk_give_up_after_s=1,
                                                     stk_query_backoff_s=0.05),
                        broker=stk.broker, daraja=stk.daraja, redis=stk.redis, database=False,
                        logging=False)
    topup_id = pushed(stk, account_id, phone="254700000042")
    actors.send_query(topup_id)
    stub_broker.join(actors.QUERIES_QUEUE, timeout=20_000)
    topup = row(topup_id)
    assert (topup.status, topup.failure_code) == (UNKNOWN, None)
    assert topup.query_attempts >= 2


def test_a_push_maybe_sent_or_abandoned_mid_send_is_unknown_past_the_deadline_never_failed(
        stk, account_id):
    ambiguous = new_topup(account_id, "254700010009")   # answered 500.003.1001
    with db.connection():
        assert tasks.push(ambiguous, stk.daraja, query_after_s=60, redis=stk.redis)[0] == "ambiguous"
    abandoned = new_topup(account_id, "254712345679")
    with db.connection():
        pushes.claim_push(abandoned)                     # its worker died while sending
    never_sent = new_topup(account_id, "254712345670")
    for topup_id in (ambiguous, abandoned, never_sent):
        age(topup_id, 90_000)
    with db.connection():
        given_up = sweeps.overdue_for_giving_up(86_400)
    assert sorted(given_up) == sorted([ambiguous, abandoned, never_sent])
    assert (row(ambiguous).status, row(abandoned).status) == (UNKNOWN, UNKNOWN)
    # only a push that certainly never left is a failure: no prompt, no money
    assert (row(never_sent).status, row(never_sent).failure_code) == (FAILED, "not_sent")


def test_an_unknown_topup_is_credited_once_by_a_late_success_callback(stk, account_id):
    topup_id = pushed(stk, account_id)
    age(topup_id, 3601)
    with db.connection():
        tasks.query(topup_id, stk.daraja, give_up_after_s=3600, redis=stk.redis)
        checkout = TopUp.get(TopUp.id == topup_id).checkout_request_id
        for _ in range(2):
            stored, _ = inbox.store_callback(success_callback(checkout, receipt="LATE000001"), None)
            settlement.apply_callback(stored.seq)
    topup = row(topup_id)
    assert (topup.status, topup.mpesa_receipt, topup.credited_cents) == (
        SUCCEEDED, "LATE000001", 10_000)
    assert kinds(topup_id).count("credited") == 1


def test_a_query_chain_lost_with_redis_is_taken_up_by_the_sweep_within_its_backoff(
        stk, account_id):
    # 254700010010: the query answers "4999 still under processing" five times
    topup_id = pushed(stk, account_id, "254700010010")
    with db.connection():
        for _ in range(2):
            try:
                tasks.query(topup_id, stk.daraja, give_up_after_s=3600, redis=stk.redis,
                            backoff_s=10)
            except tasks.AskAgainLater:
                pass
        asked_at = TopUp.get(TopUp.id == topup_id).next_query_at
        # the retry's message is lost (Redis restarted): nobody asks again by itself
        grace = dt.timedelta(seconds=60)
        # the second query's retry waits 10 s doubled once, jittered up to twice that
        assert asked_at <= utcnow() + dt.timedelta(seconds=40)
        assert sweeps.queries_due(utcnow() + dt.timedelta(seconds=41) + grace,
                                  grace=grace) == [topup_id]
