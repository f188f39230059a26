"""A top-up's first STK query is the scheduler's: an accepted push sends no message for it, and
the sweep sends it once STK_QUERY_AFTER_S has passed with no callback. A query chain that runs
is left to its own retries until it is SWEEP_QUERY_GRACE_S overdue."""
import datetime as dt

import dramatiq.common
import pytest

from ledger import db, settlement
from ledger.models import SUCCEEDED, TopUp, utcnow
from tests.messages import taken
from tests.unit.stk_support import new_topup, row, sim
from workers import actors, scheduler, sweeps, tasks

pytestmark = pytest.mark.both_databases

SECOND = dt.timedelta(seconds=1)


def pushed(account_id, phone="254712345678") -> str:
    """A top-up whose push Daraja accepted; its callback never comes (the callback URL is the
    discard port)."""
    topup_id = new_topup(account_id, phone)
    actors.push_topup.fn(topup_id)
    assert row(topup_id).checkout_request_id
    return topup_id


def test_an_accepted_push_sends_no_query_and_the_sweep_sends_it_when_it_is_due(
        stk, account_id, stub_broker):
    topup_id = pushed(account_id)
    for queue in (actors.QUERIES_QUEUE, f"{actors.QUERIES_QUEUE}.DQ"):
        assert taken(stub_broker, queue) == [], f"a message waits in {queue}"

    pushed_at = row(topup_id).pushed_at
    after = dt.timedelta(seconds=stk.settings.stk_query_after_s)
    with db.connection():
        assert sweeps.queries_due(pushed_at + after - SECOND) == []
        assert sweeps.queries_due(pushed_at + after + SECOND) == [topup_id]
        # sent once: the next sweeps leave it to its message
        assert sweeps.queries_due(pushed_at + after + 2 * SECOND) == []


def test_the_query_the_sweep_sends_settles_a_topup_whose_callback_never_came(
        stk, account_id, stub_broker, stub_worker, daraja_sim):
    topup_id = pushed(account_id)
    with db.connection():
        TopUp.update(next_query_at=utcnow() - SECOND).where(TopUp.id == topup_id).execute()
    assert scheduler.sweep_once(86_400)["queries_due"] == 1
    stub_broker.join(actors.QUERIES_QUEUE, timeout=20_000)
    stub_worker.join()
    assert row(topup_id).status == SUCCEEDED
    assert sim(daraja_sim, "GET", "/__sim/stats")["stkquery"] == 1


def test_a_query_chain_that_runs_is_sent_again_only_once_it_is_the_grace_overdue(
        stk, account_id):
    topup_id = pushed(account_id)
    grace = dt.timedelta(seconds=60)
    with db.connection():
        settlement.record_query(topup_id, answer="pending", recheck_in_s=10)
        next_query_at = row(topup_id).next_query_at
        assert sweeps.queries_due(next_query_at + SECOND, grace=grace) == []
        assert sweeps.queries_due(next_query_at + grace + SECOND, grace=grace) == [topup_id]


def test_a_sweep_that_fails_further_on_has_sent_the_queries_it_claimed(
        stk, account_id, stub_broker, monkeypatch):
    topup_id = pushed(account_id)
    with db.connection():
        TopUp.update(next_query_at=utcnow() - SECOND).where(TopUp.id == topup_id).execute()

    def database_refuses(*args, **kwargs):
        raise RuntimeError("a later sweep fails")
    monkeypatch.setattr(scheduler.orphans, "resolve_credited", database_refuses)
    with pytest.raises(RuntimeError):
        scheduler.sweep_once(86_400)
    sent = taken(stub_broker, actors.QUERIES_QUEUE)
    assert [(m.actor_name, list(m.args)) for m in sent] == [("query_topup", [topup_id])]


def test_the_sweep_sends_every_due_query_a_batch_at_a_time(
        stk, account_id, stub_broker, monkeypatch):
    monkeypatch.setattr(sweeps, "BATCH", 2)
    topup_ids = {pushed(account_id, phone=f"25471234500{n}") for n in range(5)}
    with db.connection():
        TopUp.update(next_query_at=utcnow() - SECOND).execute()
    assert scheduler.sweep_once(86_400)["queries_due"] == 5
    assert {m.args[0] for m in taken(stub_broker, actors.QUERIES_QUEUE)} == topup_ids


def test_the_next_check_a_query_sets_is_never_before_its_retry_can_come():
    # what Dramatiq's Retries does with the query actor's backoff after the query numbered n
    # of a chain (its message's retries are n then): the sweeper must not start a second
    # chain, and a second Daraja query, while that retry may still come
    backoff_s = 10
    max_ms = actors.query_topup.options["max_backoff"]
    for attempts in range(8):
        waits = [dramatiq.common.compute_backoff(attempts, factor=backoff_s * 1000,
                                                 max_backoff=max_ms)[1] for _ in range(300)]
        assert max(waits) <= tasks.latest_retry_s(attempts, backoff_s) * 1000, attempts
