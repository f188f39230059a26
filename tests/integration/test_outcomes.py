"""Every outcome settled, on real Redis, PostgreSQL and processes: failures, callbacks lost,
duplicated or late, STK Query with backoff, undocumented codes and pushes whose answer was lost.

Each test ends in balances and statuses held against what the simulator says happened.
"""
import json
import os
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor

from ledger import db
from ledger.models import TopUpEvent
from tests.integration.checks import (
    FAST, assert_every_topup_is_as_the_simulator_decided, credited_times, simulator_transactions,
    submit, wait_until_settled_and_quiet,
)
from tests.integration.system import BIN, sim_call
from tests.waiting import wait_until

# 25470000CCCC: the simulator answers ResultCode CCCC; these are Daraja's documented failure codes.
DOCUMENTED_FAILURES = [1, 2, 3, 4, 8, 17, 1001, 1019, 1025, 1031, 1032, 1036, 1037, 2001, 2028,
                       8006, 9999]


def start(system, **env):
    system.env.update({**FAST, **env})
    system.start_api(workers=2, threads=4)
    system.start_workers(processes=2, threads=8)
    system.start_scheduler(interval=1)
    return system.create_account()[1]


def topup_row(system, key, topup_id):
    return system.get(key, f"/v1/topups/{topup_id}")


def wait_for_status(system, key, topup_id, *statuses, timeout: float = 60) -> dict:
    """The top-up, once its status is one of ``statuses`` (any but pending if none given)."""
    def reached():
        row = topup_row(system, key, topup_id)
        done = row["status"] in statuses if statuses else row["status"] != "pending"
        return row if done else None
    return wait_until(reached, timeout=timeout, interval=0.3,
                      message=f"top-up {topup_id} to become {' or '.join(statuses) or 'settled'}")


def history(topup_id) -> list[tuple[str, dict]]:
    with db.connection():
        return [(e.kind, json.loads(e.detail)) for e in TopUpEvent.select()
                .where(TopUpEvent.topup == topup_id).order_by(TopUpEvent.seq)]


def test_200_topups_with_failures_and_dropped_duplicated_late_callbacks_end_as_the_simulator_decided(
        pg_system, simulator):
    sim_call(simulator, "POST", "/__sim/config", {
        "drop_callback_rate": 0.2, "duplicate_callback_rate": 0.1, "late_callback_rate": 0.1,
        "late_callback_delay_s": 3.0, "failure_rate": 0.15, "seed": 20261128})
    key = start(pg_system)
    rng = random.Random(7)
    phones = ([f"2547000{code:05d}" for code in DOCUMENTED_FAILURES] + ["254700000000"]
              + [f"25471{n:07d}" for n in range(200 - len(DOCUMENTED_FAILURES) - 1)])
    # amounts from 1 to 2500 shillings, so that "to the cent" checks more than a count
    requests_ = [(rng.randint(1, 2500), phone) for phone in phones]

    with ThreadPoolExecutor(max_workers=8) as pool:
        created = list(pool.map(lambda r: submit(pg_system, key, *r), requests_))
    wait_until_settled_and_quiet(pg_system, key, simulator, timeout=150)

    topups = assert_every_topup_is_as_the_simulator_decided(
        pg_system, key, simulator, [t["id"] for t in created])
    statuses = {t["status"] for t in topups.values()}
    assert statuses == {"succeeded", "failed"}
    # the run really had every kind of trouble in it
    decisions = [t["decisions"] for t in simulator_transactions(simulator).values()]
    for kind in ("drop", "duplicate", "late", "failure"):
        assert sum(d[kind] for d in decisions) >= 5, kind
    assert {topups[t["id"]]["failure_code"] for t in created if t["phone"].startswith("2547000")
            and t["phone"] != "254700000000"} == {str(c) for c in DOCUMENTED_FAILURES}
    # a top-up whose callback never came was settled by STK Query
    transactions = simulator_transactions(simulator)
    for topup in topups.values():
        if transactions[topup["checkout_request_id"]]["callbacks_delivered"] == 0:
            settling = [d for kind, d in history(topup["id"]) if kind in ("credited", "failed")]
            assert [d["source"] for d in settling] == ["query"], topup["id"]


def test_a_query_answered_being_processed_five_times_settles_on_the_sixth_after_growing_delays(
        pg_system, simulator):
    # 25470001 0010 / 0011: no callback; five "still processing" answers, as ResultCode
    # "4999" and as the older HTTP 500 "The transaction is being processed"
    key = start(pg_system, STK_QUERY_BACKOFF_S="0.3")
    created = [pg_system.topup(key, 500, "254700010010"), pg_system.topup(key, 700, "254700010011")]
    for topup in created:
        done = wait_for_status(pg_system, key, topup["id"])
        assert (done["status"], done["mpesa_receipt"]) == ("succeeded", None)

        assert simulator_transactions(simulator)[done["checkout_request_id"]]["queries"] == 6
        with db.connection():
            queries = list(TopUpEvent.select().where((TopUpEvent.topup == topup["id"])
                                                     & (TopUpEvent.kind == "query"))
                           .order_by(TopUpEvent.seq))
        assert [json.loads(q.detail)["answer"] for q in queries] == ["pending"] * 5 + ["paid"]
        times = [q.created_at for q in queries]
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
        # each wait at least as long as the one before (give or take the workers' polling),
        # and the last far longer than the first
        assert all(later > earlier - 0.35 for earlier, later in zip(gaps, gaps[1:])), gaps
        assert gaps[-1] > 4 * gaps[0], gaps
    assert pg_system.get(key, "/v1/wallet")["balance_cents"] == 120_000
    assert max(credited_times().values()) == 1


def test_an_undocumented_result_code_is_never_a_failure_it_ends_unknown_and_a_late_success_credits_it(
        pg_system, simulator):
    key = start(pg_system, STK_GIVE_UP_AFTER_S="4")
    topup = pg_system.topup(key, 300, "254700000042")   # called back with ResultCode 42
    seen = set()

    def unknown():
        row = topup_row(pg_system, key, topup["id"])
        seen.add(row["status"])
        return row if row["status"] == "unknown" else None
    done = wait_until(unknown, timeout=40, interval=0.2, message="the top-up to become unknown")

    assert seen <= {"pending", "unknown"}
    assert (done["failure_code"], done["completed_at"]) == (None, None)
    txn = simulator_transactions(simulator)[done["checkout_request_id"]]
    assert (txn["result_code"], txn["callbacks_delivered"]) == (42, 1)
    kinds = [kind for kind, _ in history(topup["id"])]
    assert "callback_unknown_code" in kinds and "failed" not in kinds
    assert [d["status"] for kind, d in history(topup["id"]) if kind == "gave_up"] == ["unknown"]

    # a success callback that comes late settles it after all, and credits it once
    late = {"Body": {"stkCallback": {
        "MerchantRequestID": txn["merchant_request_id"],
        "CheckoutRequestID": done["checkout_request_id"], "ResultCode": 0,
        "ResultDesc": "The service request is processed successfully.",
        "CallbackMetadata": {"Item": [
            {"Name": "Amount", "Value": 300.00}, {"Name": "MpesaReceiptNumber", "Value": "LATE42RCPT"},
            {"Name": "Balance"}, {"Name": "TransactionDate", "Value": 20261128100000},
            {"Name": "PhoneNumber", "Value": 254700000042}]}}}}
    for _ in range(2):
        assert pg_system.post_callback(late).status_code == 200
    credited = wait_for_status(pg_system, key, topup["id"], "succeeded", timeout=20)
    assert credited["mpesa_receipt"] == "LATE42RCPT"
    assert pg_system.get(key, "/v1/wallet")["balance_cents"] == 30_000
    assert credited_times() == {topup["id"]: 1}


def orphans(system) -> list[dict]:
    out = subprocess.run([os.path.join(BIN, "topupctl"), "orphans", "--json"], env=system.env,
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)["data"]


def test_a_push_answered_with_an_internal_error_or_html_is_never_sent_again_and_its_payment_credits_it(
        pg_system, simulator):
    # 254700010009: 500 "500.003.1001 Internal Server Error"; 254700010006: 200 with HTML.
    # Both were processed and are called back: the prompt did reach the phone. The gateway
    # never learnt their CheckoutRequestIDs, so each callback arrives as an orphan payment and
    # is matched to its top-up by phone and amount.
    key = start(pg_system, STK_GIVE_UP_AFTER_S="6")
    phones = ["254700010009", "254700010006"]
    created = [pg_system.topup(key, 420, phones[0]), pg_system.topup(key, 650, phones[1])]

    settled = [wait_for_status(pg_system, key, topup["id"], "succeeded", timeout=30)
               for topup in created]

    transactions = {t["phone"]: t for t in simulator_transactions(simulator).values()}
    assert sorted(transactions) == ["254700010006", "254700010009"]
    assert sim_call(simulator, "GET", "/__sim/stats")["stkpush"] == 2   # never sent again
    for phone, topup, row in zip(phones, created, settled):
        paid = transactions[phone]
        assert (row["checkout_request_id"], row["mpesa_receipt"], row["failure_code"]) == (
            paid["checkout_request_id"], paid["receipt"], None)
        kinds = [kind for kind, _ in history(topup["id"])]
        assert kinds.count("push_ambiguous") == kinds.count("orphan_matched") == 1
        assert kinds.count("credited") == 1
    assert pg_system.get(key, "/v1/wallet")["balance_cents"] == (420 + 650) * 100
    assert orphans(pg_system) == []   # none left unresolved
