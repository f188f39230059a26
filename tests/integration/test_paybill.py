"""Paybill payments through the gateway's real processes (gunicorn, `dramatiq workers`,
`topupctl scheduler`, `topupctl daraja …`) on PostgreSQL and Redis, the customer played by the
simulator:

- a customer payment credits the wallet once and delivers wallet.top_up; an unknown account
  number is refused at validation, and kept as an orphan when validation cannot be reached;
- a confirmation the simulator drops is credited by the next Pull Transactions read, with
  nobody's help;
- 50 deliveries of one payment, mixed across STK callbacks, C2B confirmations, Pull
  Transactions reads and reconciliations, racing on several worker processes, make one
  credit.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import dramatiq
import pytest
import requests
from dramatiq.brokers.redis import RedisBroker

from ledger import db, orphans, reconcile, settlement, statement
from ledger.models import (
    Account, C2BConfirmation, Callback, LedgerEntry, OrphanPayment, PullRun, TopUp, TopUpEvent,
    Wallet, utcnow,
)
from tests.integration.system import BIN, CALLBACK_TOKEN, sim_call
from tests.unit.c2b_support import c2b_body
from tests.unit.test_crediting import success_body
from tests.waiting import wait_until
from tests.webhook_receiver import Receiver


@pytest.fixture
def paybill_system(pg_system):
    pg_system.env.update({"WEBHOOK_ALLOW_PRIVATE": "1", "STK_QUERY_AFTER_S": "3600",
                          "SWEEP_UNAPPLIED_CALLBACK_AFTER_S": "2"})
    return pg_system


def topupctl(system, *args) -> str:
    done = subprocess.run([os.path.join(BIN, "topupctl"), *args], env=system.env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def account_number(account_id: str) -> str:
    with db.connection():
        return Account.get(Account.id == account_id).account_number


def balance(account_id: str) -> int:
    with db.connection():
        return Wallet.get(Wallet.account == account_id).balance_cents


def pay(simulator, number: str, amount) -> dict:
    return sim_call(simulator, "POST", "/__sim/c2b/pay",
                    {"account_number": number, "amount": amount, "phone": "254712345678"})


def test_a_customer_payment_credits_once_and_an_unknown_account_is_refused_or_kept(
        paybill_system, simulator):
    system = paybill_system
    system.start_api()
    system.start_workers(processes=2, threads=4)
    account_id, key = system.create_account()
    receiver = Receiver().start()
    try:
        created = requests.post(system.api_url + "/v1/webhook_endpoints", timeout=10,
                                headers={"Authorization": f"Bearer {key}"},
                                json={"url": receiver.url, "events": ["wallet.top_up"]})
        receiver.secret = created.json()["secret"]
        assert json.loads(topupctl(system, "daraja", "register-urls"))["registered"]
        wallet = system.get(key, "/v1/wallet")
        assert (wallet["paybill"], wallet["account_number"]) == ("174379",
                                                                 account_number(account_id))

        # typed loosely, and confirmed twice: credited once, to the cent, and said so
        number = wallet["account_number"]
        sim_call(simulator, "POST", "/__sim/faults", {"fault": "duplicate_confirmation"})
        paid = pay(simulator, f"{number[:3].lower()}-{number[3:]}", "250.50")
        assert (paid["status"], paid["validation"], paid["confirmations_delivered"]) == (
            "paid", "0", 2)
        wait_until(lambda: receiver.verified, timeout=60, message="wallet.top_up delivered")
        [delivery] = receiver.verified
        event = delivery["event"]
        assert event["type"] == "wallet.top_up" and event["data"]["amount_cents"] == 25_050
        topup = event["data"]["topup"]
        assert (topup["channel"], topup["status"], topup["mpesa_receipt"], topup["phone"]) == (
            "c2b", "succeeded", paid["receipt"], "2547 ***** 678")
        assert system.get(key, "/v1/wallet")["balance_cents"] == 25_050

        # an account number nobody has: refused before the customer pays
        refused = pay(simulator, "NOBODY", 40)
        assert (refused["status"], refused["validation"]) == ("refused", "C2B00012")

        # unless validation cannot be reached (ResponseType Completed): kept as an orphan
        sim_call(simulator, "POST", "/__sim/faults", {"fault": "validation_unreachable"})
        kept = pay(simulator, "NOBODY", 40)
        assert (kept["status"], kept["confirmations_delivered"]) == ("paid", 1)
        wait_until(lambda: kept["receipt"] in topupctl(system, "orphans", "--json"),
                   timeout=60, message="the orphan payment")
        [orphan] = json.loads(topupctl(system, "orphans", "--json"))["data"]
        assert (orphan["bill_ref_number"], orphan["amount_cents"],
                orphan["checkout_request_id"]) == ("NOBODY", 4_000, None)
    finally:
        receiver.stop()
    assert balance(account_id) == 25_050
    with db.connection():
        assert LedgerEntry.select().count() == 1
    assert len(receiver.verified) == 1


def test_a_confirmation_dropped_by_the_simulator_is_credited_by_the_next_pull(
        paybill_system, simulator):
    system = paybill_system
    system.env.update({"DARAJA_PULL": "1", "DARAJA_PULL_EVERY_S": "2"})
    system.start_api()
    system.start_workers(processes=1, threads=4)
    system.start_scheduler(interval=0.5)
    account_id, key = system.create_account()
    topupctl(system, "daraja", "register-urls")
    sim_call(simulator, "POST", "/__sim/faults", {"fault": "drop_confirmation"})

    paid = pay(simulator, account_number(account_id), 75)

    assert (paid["status"], paid["last_confirmation"]) == ("paid", "dropped")
    wait_until(lambda: balance(account_id) == 7_500, timeout=60,
               message="the payment credited by a pull")
    with db.connection():
        [report] = list(C2BConfirmation.select())
        assert (report.source, report.outcome, report.trans_id) == (
            "pull", "credited", paid["receipt"])
        [topup] = list(TopUp.select().where(TopUp.account == account_id))
        assert (topup.channel, topup.mpesa_receipt) == ("c2b", paid["receipt"])
    assert [t["channel"] for t in system.get(key, "/v1/topups")["data"]] == ["c2b"]


# --- 50 deliveries of one payment, by four roads -----------------------------------------------

STK_CALLBACKS, C2B_CONFIRMATIONS, PULLS, RECONCILIATIONS = 17, 17, 8, 8


def test_fifty_deliveries_of_one_payment_across_four_roads_make_one_credit(
        paybill_system, simulator, redis_server, tmp_path):
    """The deliveries are made to meet at the credit: the callbacks and confirmations are
    stored and the pulls queued while the workers are stopped, and eight reconciliations have
    found the payment uncredited; then three worker processes start on all of it at once, and
    the reconciliations apply as soon as the first worker is at work. (The pulls, a Daraja
    round trip behind the others, mostly find the receipt credited and feed nothing; pulled
    rows contending at the credit itself are test_c2b_race_pg's.)"""
    system = paybill_system
    system.start_api(workers=2, threads=8)
    system.start_workers(processes=1, threads=4)
    account_id, key = system.create_account()
    topupctl(system, "daraja", "register-urls")

    # a push the customer paid, whose callback Daraja never sent (0700 010001), given up on
    # (unknown): what every road may still settle, reconciliation's --apply included
    created = system.topup(key, 320, "0700 010001", reference="RACE50")
    checkout = wait_until(
        lambda: system.get(key, f"/v1/topups/{created['id']}")["checkout_request_id"],
        timeout=30, message="the push answered")
    system.stop_process("workers")
    receipt = sim_call(simulator, "GET", f"/__sim/transactions/{checkout}")["receipt"]
    with db.connection():
        assert settlement.give_up(created["id"], 1,
                                  now=utcnow() + dt.timedelta(seconds=5)) == "unknown"
    statement_csv = requests.get(f"{simulator.url}/__sim/statement.csv", timeout=10).content

    # 1. the callbacks and the confirmations, stored and queued; the pulls, queued
    callback = success_body(checkout, amount=320, receipt=receipt, phone=254700010001)
    confirmation = c2b_body(receipt, "RACE50", "320.00", msisdn="2547 ***** 001")
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(
            lambda path: requests.post(f"{system.api_url}{path}", timeout=30,
                                       data=callback if "callback" in path else confirmation,
                                       headers={"Content-Type": "application/json"}).status_code,
            [f"/daraja/callback/{CALLBACK_TOKEN}"] * STK_CALLBACKS
            + [f"/daraja/c2b/confirmation/{CALLBACK_TOKEN}"] * C2B_CONFIRMATIONS))
    assert answers == [200] * (STK_CALLBACKS + C2B_CONFIRMATIONS)
    broker = RedisBroker(url=redis_server.url)
    for _ in range(PULLS):
        broker.enqueue(dramatiq.Message(queue_name="queries", actor_name="pull_transactions",
                                        args=(), kwargs={}, options={}))
    broker.close()

    # 2. the reconciliations have found it paid and not credited
    with db.connection():
        found = [reconcile.find(statement.parse(statement_csv)) for _ in range(RECONCILIATIONS)]
    assert all(len(f.plans) == 1 for f in found)

    # 3. all at once
    system.start_workers(processes=3, threads=4)

    def the_race_is_on():
        with db.connection():
            return (Callback.select().where(Callback.applied_at.is_null(False)).exists()
                    or C2BConfirmation.select().where(
                        C2BConfirmation.applied_at.is_null(False)).exists()
                    or PullRun.select().exists())

    def reconciled(plans):
        wait_until(the_race_is_on, timeout=60, interval=0.005, message="a worker at work")
        with db.connection():
            return reconcile.apply(plans, "rc_race")[0]["outcome"]

    with ThreadPoolExecutor(max_workers=RECONCILIATIONS) as pool:
        reconciliations = list(pool.map(reconciled, found))

    def all_applied():
        with db.connection():
            return (Callback.select().where(Callback.applied_at.is_null()).count() == 0
                    and C2BConfirmation.select().where(
                        C2BConfirmation.applied_at.is_null()).count() == 0
                    and PullRun.select().where(PullRun.finished_at.is_null(False)).count()
                    == PULLS)
    wait_until(all_applied, timeout=120, message="every delivery applied")

    with db.connection():
        assert LedgerEntry.select().where(LedgerEntry.mpesa_receipt == receipt).count() == 1
        assert LedgerEntry.select().count() == 1
        assert Wallet.get(Wallet.account == account_id).balance_cents == 32_000
        topup = TopUp.get(TopUp.id == created["id"])
        assert (topup.status, topup.mpesa_receipt) == ("succeeded", receipt)
        assert TopUp.select().where(TopUp.channel == "c2b").count() == 0
        with db.write_transaction():   # what the scheduler's sweep does
            orphans.resolve_credited()
        assert OrphanPayment.select().where(OrphanPayment.resolved_at.is_null()).count() == 0
        history = [(e.kind, json.loads(e.detail).get("source"))
                   for e in TopUpEvent.select().where(TopUpEvent.topup == topup.id)]
        outcomes = ([c.outcome for c in Callback.select()]
                    + [c.outcome for c in C2BConfirmation.select()] + reconciliations)
    assert outcomes.count("credited") <= 1
    assert [kind for kind, _ in history].count("credited") == 1
    # the later deliveries attached to the credit: the top-up shows the roads they took
    again = {source for kind, source in history if kind == "duplicate_success"}
    assert {"callback", "c2b"} <= again | {s for k, s in history if k == "credited"}
    events = system.get(key, "/v1/events?type=wallet.top_up")["data"]
    assert [e["data"]["topup"]["id"] for e in events] == [created["id"]]
