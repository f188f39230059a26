"""Reconciliation end to end: 300 top-ups through the simulator with planted discrepancies, the
simulator's organisation-portal statement, and `topupctl reconcile` run as an operator runs it.

Planted, and nothing else may be reported:
- callbacks dropped while STK Query answers "still processing" for ever: those top-ups end
  `unknown` though the customer paid (a dropped callback on a failed payment ends `unknown`
  and unpaid);
- callbacks that never come while STK Query answers: credited on the query's word, without a
  receipt, so matched by phone, amount and time;
- pushes whose answer was lost (500.003.1001): the callback arrives as an orphan and is matched
  to its top-up by phone and amount, so the statement finds them matched by receipt;
- a payment no top-up asked for (pushed straight to the simulator): an orphan with no account;
- a forged success callback for a CheckoutRequestID nobody issued: an orphan nobody paid;
- a forged success callback crediting a top-up the customer cancelled: a credit nobody paid;
- a callback understating the amount by one shilling (254700010012);
- a top-up left `unknown` that was never paid.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor

import requests

from daraja.client import DarajaClient
from daraja.config import DarajaConfig
from ledger import db
from ledger.models import LedgerEntry, OrphanPayment, TopUp, Wallet
from simulator.config import SimulatorConfig
from tests.integration.checks import (
    FAST, every_callback_delivered_and_applied, nothing_pending, simulator_transactions, submit,
)
from tests.integration.system import BIN, CALLBACK_TOKEN, sim_call
from tests.waiting import wait_until

OPS_TOKEN = "ops-" + "5eed" * 8


def success_callback(checkout, receipt, amount, phone):
    return {"Body": {"stkCallback": {
        "MerchantRequestID": "forged-1", "CheckoutRequestID": checkout, "ResultCode": 0,
        "ResultDesc": "The service request is processed successfully.",
        "CallbackMetadata": {"Item": [
            {"Name": "Amount", "Value": amount}, {"Name": "MpesaReceiptNumber", "Value": receipt},
            {"Name": "Balance"}, {"Name": "TransactionDate", "Value": 20261128100000},
            {"Name": "PhoneNumber", "Value": int(phone)}]}}}}


def reconcile(system, path, *flags) -> dict:
    done = subprocess.run([os.path.join(BIN, "topupctl"), "reconcile", str(path), "--json", *flags],
                          env=system.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def topup_by(phone=None, topup_id=None) -> TopUp:
    with db.connection():
        return TopUp.get(TopUp.phone == phone) if phone else TopUp.get(TopUp.id == topup_id)


def settled_in_gateway(system, key, topup_id):
    row = system.get(key, f"/v1/topups/{topup_id}")
    return row if row["status"] != "pending" else None


def in_simulator(simulator, phone):
    return sim_call(simulator, "GET", f"/__sim/transactions?phone={phone}")["data"]


def run_concurrently(system, key, requests_):
    with ThreadPoolExecutor(max_workers=12) as pool:
        return list(pool.map(lambda r: submit(system, key, *r), requests_))


def wait_quiet(system, key, simulator, timeout=180):
    wait_until(lambda: nothing_pending(system, key), timeout=timeout, interval=0.5,
               message="every top-up to leave `pending`")
    wait_until(lambda: every_callback_delivered_and_applied(simulator), timeout=30,
               interval=0.5, message="every planned callback to be delivered and applied")


def test_300_topups_with_planted_discrepancies_reconcile_to_exactly_those_and_apply_settles_the_safe_ones(
        pg_system, simulator, tmp_path):
    pg_system.env.update({**FAST, "STK_QUERY_AFTER_S": "1", "STK_QUERY_BACKOFF_S": "0.3",
                          # long enough that a busy machine's backlog is not given up
                          "STK_GIVE_UP_AFTER_S": "20", "OPS_TOKEN": OPS_TOKEN})
    pg_system.start_api(workers=2, threads=8)
    pg_system.start_workers(processes=2, threads=8)
    pg_system.start_scheduler(interval=1)
    account, key = pg_system.create_account()
    rng = random.Random(300)
    sim_call(simulator, "POST", "/__sim/config", {"callback_delay_s": 0.05})
    phones = (f"2547220{n:05d}" for n in range(1000))

    # A: 30 top-ups, the first 10 pushes called back never; STK Query answers and credits them
    sim_call(simulator, "POST", "/__sim/faults", {"fault": "no_callback", "count": 10})
    first = run_concurrently(pg_system, key, [(rng.randint(1, 2500), next(phones))
                                              for _ in range(30)])
    wait_quiet(pg_system, key, simulator)

    # a payment no top-up asked for: pushed straight to Daraja, called back to the gateway
    stranger = DarajaClient(DarajaConfig(
        base_url=simulator.url, consumer_key="sim-consumer-key",
        consumer_secret="sim-consumer-secret", shortcode="174379",
        passkey=SimulatorConfig().passkey,
        callback_url=f"{pg_system.api_url}/daraja/callback/{CALLBACK_TOKEN}"))
    stranger_push = stranger.stk_push(amount=321, phone="254711888888", account_reference="ELSE")
    # a success callback for a CheckoutRequestID nobody issued
    assert pg_system.post_callback(success_callback(
        "ws_CO_28112026000000000099999", "QFORGED002", 5000, "254711999999")).status_code == 200

    def orphans():
        with db.connection():
            return OrphanPayment.select().count() == 2
    wait_until(orphans, timeout=30, message="both orphan payments to be kept")

    # B: from now on STK Query answers "still processing" for ever; 6 % of callbacks dropped
    sim_call(simulator, "POST", "/__sim/config", {
        "query_pending_times": 1000, "drop_callback_rate": 0.06, "failure_rate": 0.05,
        "seed": 20261128})
    # the customer cancels (1032), no callback comes, and a forged success credits it
    sim_call(simulator, "POST", "/__sim/faults", {"fault": "no_callback"})
    forged = pg_system.topup(key, 77, "254700001032")
    forged_checkout = wait_until(
        lambda: pg_system.get(key, f"/v1/topups/{forged['id']}")["checkout_request_id"],
        timeout=30, message="the cancelled top-up's push to be accepted")
    pg_system.post_callback(success_callback(forged_checkout, "QFORGED001", 77, "254700001032"))
    wait_until(lambda: settled_in_gateway(pg_system, key, forged["id"]), timeout=30,
               message="the forged callback to credit the cancelled top-up")
    # a top-up whose customer cancels and whose callback never comes: unknown, never paid
    sim_call(simulator, "POST", "/__sim/faults", {"fault": "no_callback"})
    unpaid = pg_system.topup(key, 55, "254700001031")
    wait_until(lambda: in_simulator(simulator, "254700001031"), timeout=30,
               message="the unpaid top-up's push")
    # the callback says 999 where the customer paid 1000
    understated = pg_system.topup(key, 1000, "254700010012")
    wait_until(lambda: in_simulator(simulator, "254700010012"), timeout=30,
               message="the understated top-up's push")
    # the next 3 pushes are answered 500.003.1001: processed, but the gateway never learns
    # their CheckoutRequestID
    sim_call(simulator, "POST", "/__sim/faults", {"fault": "internal_error", "count": 3})
    bulk = run_concurrently(pg_system, key, [(rng.randint(1, 2500), next(phones))
                                             for _ in range(266)])
    wait_quiet(pg_system, key, simulator)
    # the last payment of the period, so that the statement's span covers every top-up
    sim_call(simulator, "POST", "/__sim/config", {"drop_callback_rate": 0, "failure_rate": 0})
    closing = pg_system.topup(key, 10, next(phones))
    wait_until(lambda: settled_in_gateway(pg_system, key, closing["id"]), timeout=30,
               message="the closing top-up")
    created = first + [forged, unpaid, understated] + bulk + [closing]
    assert len(created) == 300

    # what was planted, from the simulator's own record: a callback that never arrived was
    # dropped on purpose, or (rarely, under this load) failed to connect; either way the
    # gateway never heard it
    transactions = simulator_transactions(simulator)
    by_phone = {t["phone"]: t for t in transactions.values()}
    paid = {t["receipt"]: t for t in transactions.values() if t["paid"]}
    assert not {t["phone"] for t in created} - set(by_phone), "top-ups never pushed"
    phase_a = [by_phone[t["phone"]] for t in first]
    phase_b = [by_phone[t["phone"]] for t in bulk]
    unheard = lambda t: t["callbacks_delivered"] == 0   # noqa: E731
    by_query = [t for t in phase_a if t["paid"] and unheard(t)]
    lost_answers = [t for t in phase_b if t["decisions"]["source"] == "fault:internal_error"]
    assert len(lost_answers) == 3 and not any(unheard(t) for t in lost_answers)
    assert len(by_query) >= 10 and sum(t["decisions"]["drop"] for t in phase_b) >= 5
    never_heard = [t for t in phase_b if t["paid"] and unheard(t)]
    unknown_paid = never_heard
    unknown_unpaid = [t for t in phase_b if not t["paid"] and unheard(t)]
    with db.connection():
        statuses = {t.phone: t.status for t in TopUp.select()}
    assert {statuses[t["phone"]] for t in unknown_paid + unknown_unpaid} == {"unknown"}
    assert statuses["254700001031"] == "unknown" and statuses["254700001032"] == "succeeded"
    with db.connection():
        for t in lost_answers:
            topup = topup_by(phone=t["phone"])
            assert (topup.status, topup.checkout_request_id, topup.mpesa_receipt) == (
                "succeeded", t["checkout_request_id"], t["receipt"])

    statement = tmp_path / "statement.csv"
    statement.write_bytes(requests.get(simulator.url + "/__sim/statement.csv", timeout=30).content)
    with db.connection():
        balance_before = Wallet.get(Wallet.account == account).balance_cents

    report = reconcile(pg_system, statement)

    assert report["statement"]["payments"] == len(paid) and report["statement"]["charges"] == 1
    reported_unpaid = sorted(i["receipt"] for i in report["paid_not_credited"])
    assert reported_unpaid == sorted(t["receipt"] for t in unknown_paid + [
        by_phone["254711888888"]])
    owners = {i["receipt"]: i["belongs_to"] for i in report["paid_not_credited"]}
    for t in never_heard:
        assert owners[t["receipt"]] == {"topup": owners[t["receipt"]]["topup"]}
        assert owners[t["receipt"]]["topup"]["id"] == topup_by(phone=t["phone"]).id
        assert owners[t["receipt"]]["topup"]["status"] == "unknown"
    assert list(owners[by_phone["254711888888"]["receipt"]]) == ["orphan"]
    assert owners[by_phone["254711888888"]["receipt"]]["orphan"]["checkout_request_id"] == \
        stranger_push.checkout_request_id
    assert [(d["receipt"], d["statement_amount_cents"], d["ledger_amount_cents"])
            for d in report["amounts_differ"]] == [
        (by_phone["254700010012"]["receipt"], 100_000, 99_900)]
    assert [(c["topup"], c["receipt"]) for c in report["credited_not_on_statement"]] == [
        (forged["id"], "QFORGED001")]
    assert [o["receipt"] for o in report["orphans_not_on_statement"]] == ["QFORGED002"]
    assert sorted(u["id"] for u in report["unknown_not_on_statement"]) == sorted(
        [unpaid["id"]] + [topup_by(phone=t["phone"]).id for t in unknown_unpaid])
    assert report["duplicates"] == {"statement": [], "ledger": []}
    unmatched = set(reported_unpaid) | {by_phone["254700010012"]["receipt"]}
    assert sorted(m["receipt"] for m in report["matched"]) == sorted(set(paid) - unmatched)
    assert sorted(m["receipt"] for m in report["matched"] if m["by"] == "phone_amount_time") == \
        sorted(t["receipt"] for t in by_query)
    with db.connection():   # reporting changed nothing
        assert Wallet.get(Wallet.account == account).balance_cents == balance_before

    # two operators apply the same statement at the same moment: each payment credited once
    with ThreadPoolExecutor(max_workers=2) as pool:
        applied_twice = list(pool.map(lambda _: reconcile(pg_system, statement, "--apply"),
                                      range(2)))

    credited = sorted(a["receipt"] for run in applied_twice for a in run["applied"]
                      if a["outcome"] == "credited")
    assert credited == sorted(t["receipt"] for t in unknown_paid)
    assert {a["outcome"] for run in applied_twice for a in run["applied"]} <= {
        "credited", "duplicate", "changed_meanwhile"}
    with db.connection():
        balance_after = Wallet.get(Wallet.account == account).balance_cents
        for t in unknown_paid:
            topup = topup_by(phone=t["phone"])
            assert (topup.status, topup.mpesa_receipt) == ("succeeded", t["receipt"])
            assert LedgerEntry.get(LedgerEntry.topup == topup.id).source == "statement"
        assert OrphanPayment.select().where(OrphanPayment.resolved_topup.is_null()).count() == 2
        assert TopUp.get(TopUp.id == unpaid["id"]).status == "unknown"
    assert balance_after - balance_before == sum(t["amount"] * 100 for t in unknown_paid)

    again = reconcile(pg_system, statement, "--apply")

    assert again["applied"] == [] and again["summary"]["safe_to_apply"] == 0
    assert sorted(m["receipt"] for m in again["matched"]) == sorted(
        set(paid) - {by_phone["254711888888"]["receipt"], by_phone["254700010012"]["receipt"]})
    # what no statement can settle is still reported, and only that
    assert [i["receipt"] for i in again["paid_not_credited"]] == [
        by_phone["254711888888"]["receipt"]]
    assert len(again["amounts_differ"]) == len(again["credited_not_on_statement"]) == 1
    assert len(again["orphans_not_on_statement"]) == 1
    with db.connection():
        assert Wallet.get(Wallet.account == account).balance_cents == balance_after

    runs = requests.get(pg_system.api_url + "/ops/reconciliations", timeout=10,
                        headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert runs.status_code == 200, runs.text
    listed = runs.json()["data"]
    assert [r["id"] for r in listed][0::3] == [again["id"], report["id"]]
    assert {r["id"] for r in listed[1:3]} == {run["id"] for run in applied_twice}
    assert sum(r["applied_count"] for r in listed) == len(unknown_paid)
    assert {r["statement"]["name"] for r in listed} == {"statement.csv"}
    assert requests.get(pg_system.api_url + "/ops/reconciliations",
                        timeout=10).status_code == 401
