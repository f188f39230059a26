"""One prompt in flight per phone: a second top-up for a phone waits, unclaimed, until the
first one settles; the lock expires by itself, and without Redis Daraja's own lock holds."""
import datetime as dt

import pytest

from ledger import db, topups
from ledger.models import PENDING, PUSH_QUEUED, PUSH_SENT, TopUp, utcnow
from tests.unit.stk_support import new_topup, pushes_received, row, sim, success_callback
from workers import tasks

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
        assert waiting.value.retry_after_s == tasks.PHONE_BUSY_RETRY_S
    # not claimed, not counted as an attempt: it simply waits its turn
    assert (row(second).status, row(second).push_state, row(second).push_attempts) == (
        PENDING, PUSH_QUEUED, 0)
    assert pushes_received(daraja_sim) == 1

    with db.connection():
        stored, _ = topups.store_callback(success_callback(row(first).checkout_request_id), None)
    with db.connection():
        assert tasks.apply_callback(stored.seq, redis=stk.redis) == "credited"
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
    assert 0 < ttl <= tasks.PHONE_LOCK_S * 1000


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
