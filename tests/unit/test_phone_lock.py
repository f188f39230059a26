"""One prompt in flight per phone: a second top-up for a phone waits, unclaimed, until the
first one settles; the lock expires by itself, and without Redis Daraja's own lock holds.

A callback that settles a top-up leaves its lock in Redis (no round trip per credit): the next
push for the phone finds the holder settled in the database and takes the lock over."""
import datetime as dt
import json

import pytest

from ledger import db, inbox
from ledger.models import PENDING, PUSH_QUEUED, PUSH_SENT, TopUp, utcnow
from tests.unit.stk_support import new_topup, pushes_received, row, sim, success_callback
from workers import phone_lock, tasks

pytestmark = pytest.mark.both_databases

PHONE = "254712345678"


def push(stk, topup_id, redis=None):
    with db.connection():
        return tasks.push(topup_id, stk.daraja, query_after_s=60,
                          redis=stk.redis if redis is None else redis)


def test_a_second_topup_for_a_phone_waits_until_the_first_is_settled(stk, account_id, daraja_sim):
    first, second = new_topup(account_id, PHONE), new_topup(account_id, PHONE)
    assert push(stk, first)[0] == "sent"
    for _ in range(2):
        with pytest.raises(tasks.PushNotSentYet, match="prompt open") as waiting:
            push(stk, second)
        assert waiting.value.retry_after_s == phone_lock.PHONE_BUSY_RETRY_S
    # not claimed, not counted as an attempt: it simply waits its turn
    assert (row(second).status, row(second).push_state, row(second).push_attempts) == (
        PENDING, PUSH_QUEUED, 0)
    assert pushes_received(daraja_sim) == 1

    with db.connection():
        stored, _ = inbox.store_callback(success_callback(row(first).checkout_request_id), None)
    with db.connection():
        assert tasks.apply_callback(stored.seq) == "credited"
    assert push(stk, second)[0] == "sent"
    assert row(second).push_state == PUSH_SENT
    assert pushes_received(daraja_sim) == 2


@pytest.mark.parametrize("settle", ["query", "refused", "gave_up"])
def test_the_phone_is_free_again_once_its_topup_is_settled_however(stk, account_id, settle):
    phone = {"refused": "254700020001"}.get(settle, PHONE)   # 254700020001: Invalid PhoneNumber
    first = new_topup(account_id, phone)
    outcome, _ = push(stk, first)
    if settle == "query":
        with db.connection():
            assert tasks.query(first, stk.daraja, give_up_after_s=3600, redis=stk.redis) == "credited"
    elif settle == "gave_up":
        with db.connection():
            long_ago = utcnow() - dt.timedelta(hours=2)
            TopUp.update(pushed_at=long_ago).where(TopUp.id == first).execute()
            assert tasks.query(first, stk.daraja, give_up_after_s=3600, redis=stk.redis) == "gave_up"
    else:
        assert outcome == "refused"
    assert not stk.redis.exists(f"topup:phone-lock:{phone}")


def test_the_lock_expires_by_itself(stk, account_id):
    first = new_topup(account_id, PHONE)
    push(stk, first)
    ttl = stk.redis.pttl(f"topup:phone-lock:{PHONE}")
    assert 0 < ttl <= phone_lock.PHONE_LOCK_S * 1000


class RedisDown:
    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("Redis is down")
        return fail


def test_without_redis_daraja_refuses_the_second_prompt_and_it_is_retried_later(
        stk, account_id, daraja_sim):
    sim(daraja_sim, "POST", "/__sim/config", {"callback_delay_s": 30})   # the first stays open
    first, second = new_topup(account_id, PHONE), new_topup(account_id, PHONE)
    assert push(stk, first, redis=RedisDown())[0] == "sent"
    with pytest.raises(tasks.PushNotSentYet) as waiting:
        push(stk, second, redis=RedisDown())   # "Unable to lock subscriber"
    assert waiting.value.retry_after_s >= 60
    assert (row(second).status, row(second).push_state) == (PENDING, PUSH_QUEUED)
    assert len(sim(daraja_sim, "GET", "/__sim/transactions")["data"]) == 1


def failed_callback(checkout_request_id: str) -> bytes:
    return json.dumps({"Body": {"stkCallback": {
        "MerchantRequestID": "m-1", "CheckoutRequestID": checkout_request_id,
        "ResultCode": 1032, "ResultDesc": "Request cancelled by user"}}}).encode()


def settle_by_callback(stk, topup_id, body_for):
    with db.connection():
        stored, _ = inbox.store_callback(body_for(row(topup_id).checkout_request_id), None)
    with db.connection():
        return tasks.apply_callback(stored.seq)


def lock_holder(stk, phone=PHONE):
    return (stk.redis.get(f"topup:phone-lock:{phone}") or b"").decode() or None


@pytest.mark.parametrize("body_for, outcome", [(success_callback, "credited"),
                                               (failed_callback, "failed")])
def test_the_next_topup_for_the_phone_takes_over_the_lock_of_one_a_callback_settled(
        stk, account_id, daraja_sim, body_for, outcome):
    first, second = new_topup(account_id, PHONE), new_topup(account_id, PHONE)
    assert push(stk, first)[0] == "sent"
    assert settle_by_callback(stk, first, body_for) == outcome
    assert push(stk, second)[0] == "sent"
    assert lock_holder(stk) == second
    assert pushes_received(daraja_sim) == 2


def test_a_third_topup_waits_for_the_second_that_took_the_lock_over(
        stk, account_id, daraja_sim):
    first, second, third = (new_topup(account_id, PHONE) for _ in range(3))
    push(stk, first)
    settle_by_callback(stk, first, success_callback)
    push(stk, second)
    with pytest.raises(tasks.PushNotSentYet, match="prompt open"):
        push(stk, third)
    assert (row(third).push_state, lock_holder(stk)) == (PUSH_QUEUED, second)
    assert pushes_received(daraja_sim) == 2


def test_of_two_pushes_taking_over_a_settled_lock_at_once_one_wins(stk, account_id):
    first, second, third = (new_topup(account_id, PHONE) for _ in range(3))
    push(stk, first)
    settle_by_callback(stk, first, success_callback)
    # both found the settled first holding the lock; the second's compare-and-set came first
    with db.connection():
        assert phone_lock.lock(stk.redis, PHONE, second)
    take_over = stk.redis.register_script(phone_lock.TAKE_OVER_LOCK)
    assert take_over(keys=[f"topup:phone-lock:{PHONE}"], args=[first, third, 1000]) == 0
    assert lock_holder(stk) == second


def test_a_lock_held_by_a_topup_unknown_to_this_database_is_taken_over(
        stk, account_id, daraja_sim):
    stk.redis.set(f"topup:phone-lock:{PHONE}", "tu_from_another_database", px=60_000)
    topup_id = new_topup(account_id, PHONE)
    assert push(stk, topup_id)[0] == "sent"
    assert lock_holder(stk) == topup_id


class TakeOverFails:
    """Redis that answers the lock's SET and GET but fails its scripts."""

    def __init__(self, redis):
        self.redis = redis

    def __getattr__(self, name):
        return getattr(self.redis, name)

    def register_script(self, text):
        def fail(*args, **kwargs):
            raise ConnectionError("Redis went away")
        return fail


def test_a_takeover_that_redis_fails_falls_back_on_darajas_own_lock(stk, account_id, daraja_sim):
    first, second = new_topup(account_id, PHONE), new_topup(account_id, PHONE)
    push(stk, first)
    settle_by_callback(stk, first, success_callback)
    assert push(stk, second, redis=TakeOverFails(stk.redis))[0] == "sent"
    assert pushes_received(daraja_sim) == 2
