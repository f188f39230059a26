"""Pull Transactions: a confirmation lost on the way is credited by the next pull, which reads
the window since the last complete one (with overlap), page by page, and feeds the ledger
only what it does not know. The scheduler asks for one every DARAJA_PULL_EVERY_S when
DARAJA_PULL=1."""
import dataclasses
import datetime as dt

import pytest

from daraja import DarajaClient, MemoryTokenCache, errors
from ledger import c2b, db, pulls
from ledger.models import Account, OrphanPayment, PullRun, TopUp, utcnow
from tests.messages import taken
from tests.unit.c2b_support import balance, c2b_topups, credits_of
from tests.unit.stk_support import new_topup, sim
from workers import pull, scheduler, tasks

pytestmark = pytest.mark.both_databases

NOWHERE = "http://127.0.0.1:9/daraja/c2b"   # the gateway's URLs, unreachable: nothing arrives


@pytest.fixture
def paybill(stk, daraja_sim):
    """The simulator's paybill, its URLs registered where nothing answers (ResponseType
    Completed: every payment is paid, and its confirmation lost)."""
    stk.daraja.register_c2b_urls(shortcode="174379", confirmation_url=f"{NOWHERE}/confirmation",
                                 validation_url=f"{NOWHERE}/validation")
    return stk


def pay(daraja_sim, account_id, amount="100"):
    with db.connection():
        number = Account.get_by_id(account_id).account_number
    return sim(daraja_sim, "POST", "/__sim/c2b/pay",
               {"account_number": number.lower(), "amount": amount})


def run(rt, **kw):
    with db.connection():
        return pull.pull(rt.daraja, shortcode="174379", **kw)


def test_a_confirmation_lost_on_the_way_is_credited_by_the_next_pull(
        paybill, daraja_sim, account_id):
    paid = pay(daraja_sim, account_id, "250.50")
    assert paid["status"] == "paid" and paid["confirmations_delivered"] == 0
    assert balance(account_id) == 0

    pulled = run(paybill)

    assert (pulled.transactions, pulled.fed, pulled.outcomes) == (1, 1, {"credited": 1})
    assert balance(account_id) == 25_050 and credits_of(paid["receipt"]) == 1
    [topup] = c2b_topups(account_id)
    assert topup.mpesa_receipt == paid["receipt"] and topup.phone == "254708374149"
    with db.connection():
        [report] = c2b.for_topup(topup.id)
    assert (report.source, report.outcome) == ("pull", "credited")


def test_pull_reads_every_page_and_feeds_only_what_the_ledger_lacks(
        paybill, daraja_sim, account_id):
    sim(daraja_sim, "POST", "/__sim/config", {"pull_page_size": 2})
    receipts = [pay(daraja_sim, account_id, str(10 + i))["receipt"] for i in range(5)]

    first = run(paybill)
    again = run(paybill, since=utcnow() - dt.timedelta(hours=1))

    assert (first.pages, first.transactions, first.fed) == (4, 5, 5)
    assert (again.transactions, again.fed) == (5, 0)
    assert balance(account_id) == (10 + 11 + 12 + 13 + 14) * 100
    assert all(credits_of(r) == 1 for r in receipts)


def test_an_unknown_account_number_pulled_is_kept_as_an_orphan(paybill, daraja_sim):
    paid = sim(daraja_sim, "POST", "/__sim/c2b/pay", {"account_number": "NOBODY",
                                                      "amount": 40})
    assert run(paybill).outcomes == {"orphan": 1}
    with db.connection():
        [orphan] = list(OrphanPayment.select())
    assert (orphan.mpesa_receipt, orphan.bill_ref_number) == (paid["receipt"], "NOBODY")
    assert run(paybill, since=utcnow() - dt.timedelta(hours=1)).fed == 0


def test_a_push_whose_callback_never_came_is_settled_by_the_pull(
        paybill, daraja_sim, account_id, fake_redis):
    topup_id = new_topup(account_id, "254700010001", amount=75)     # paid, never called back
    tasks.push(topup_id, paybill.daraja, query_after_s=60, redis=fake_redis)
    with db.connection():
        reference = TopUp.get(TopUp.id == topup_id).reference
    [txn] = sim(daraja_sim, "GET", "/__sim/transactions")["data"]
    assert txn["account_reference"] == reference

    assert run(paybill).outcomes == {"credited": 1}

    with db.connection():
        topup = TopUp.get(TopUp.id == topup_id)
    assert (topup.status, topup.mpesa_receipt, topup.channel) == ("succeeded", txn["receipt"],
                                                                  "stk_push")
    assert balance(account_id) == 7_500


def test_the_next_window_starts_at_the_last_complete_end_less_the_overlap(database):
    now = dt.datetime(2026, 12, 7, 12, 0)
    with db.connection():
        assert pulls.next_window(now) == (now - pulls.LOOKBACK, now)
        done = pulls.start(now - dt.timedelta(hours=1), now - dt.timedelta(minutes=10))
        pulls.finish(done, pages=1, transactions=0, fed=0)
        failed = pulls.start(now - dt.timedelta(minutes=10), now - dt.timedelta(minutes=5))
        pulls.finish(failed, pages=0, transactions=0, fed=0, error="ConnectionFailed: no")
        assert pulls.next_window(now) == (now - dt.timedelta(minutes=10) - pulls.OVERLAP, now)
        # never further back than Daraja keeps
        assert pulls.next_window(now + dt.timedelta(days=5))[0] == \
            now + dt.timedelta(days=5) - pulls.LOOKBACK


def test_a_pull_daraja_does_not_answer_is_recorded_and_raised(stk, settings):
    nowhere = DarajaClient(dataclasses.replace(stk.daraja.config, base_url="http://127.0.0.1:9"),
                           token_cache=MemoryTokenCache())
    with pytest.raises(errors.DarajaError):
        run(dataclasses.replace(stk, daraja=nowhere))
    with db.connection():
        [recorded] = list(PullRun.select())
        assert recorded.error.startswith("ConnectionFailed") and recorded.finished_at
        assert pulls.last_complete() is None


def test_the_scheduler_asks_for_a_pull_once_per_interval_when_switched_on(
        stk, stub_broker, fake_redis):
    def pulls_asked():
        return [m.actor_name for m in taken(stub_broker, "queries")].count("pull_transactions")

    scheduler.sweep_once(86400, fake_redis)
    assert pulls_asked() == 0
    for _ in range(3):
        scheduler.sweep_once(86400, fake_redis, pull_every_s=600)
    assert pulls_asked() == 1


def test_the_pull_actor_asks_again_later_when_daraja_cannot_be_reached(
        stk, stub_broker, stub_worker, monkeypatch):
    from workers import c2b as c2b_actors
    tries = []

    def unreachable(*args, **kwargs):
        tries.append(1)
        raise errors.ConnectionFailed("could not connect")
    monkeypatch.setattr(pull, "pull", unreachable)
    c2b_actors.pull_transactions.send_with_options(min_backoff=10, max_backoff=20)
    stub_broker.join("queries", fail_fast=False)
    stub_worker.join()
    assert len(tries) == 6      # the first try and five retries, then it waits for the next
