"""A top-up from request to credited wallet, on real Redis, real PostgreSQL and real processes."""
from concurrent.futures import ThreadPoolExecutor


from ledger import db, pushes, topups
from ledger.models import Callback, LedgerEntry, TopUp, Wallet
from tests.integration.system import sim_call
from tests.waiting import wait_until


def settled(system, key, topup_id):
    body = system.get(key, f"/v1/topups/{topup_id}")
    return body if body["status"] != "pending" else None


def test_a_topup_is_pushed_paid_by_callback_and_credited_once(pg_system, simulator):
    pg_system.start_api()
    pg_system.start_workers(processes=1, threads=4)
    _, key = pg_system.create_account()

    created = pg_system.topup(key, 1000, "0708 374 149", reference="INV42")
    done = wait_until(lambda: settled(pg_system, key, created["id"]), timeout=30,
                      message="the top-up to settle")

    assert done["status"] == "succeeded"
    assert done["mpesa_receipt"] and len(done["mpesa_receipt"]) == 10
    assert done["checkout_request_id"].startswith("ws_CO_")
    wallet = pg_system.get(key, "/v1/wallet")
    assert (wallet["balance_cents"], wallet["balance"]) == (100_000, "1000.00")
    entries = pg_system.get(key, "/v1/wallet/transactions")["data"]
    assert [(e["type"], e["amount_cents"], e["topup"], e["mpesa_receipt"]) for e in entries] == [
        ("top_up", 100_000, created["id"], done["mpesa_receipt"])]
    [transaction] = sim_call(simulator, "GET", "/__sim/transactions")["data"]
    assert transaction["receipt"] == done["mpesa_receipt"] and transaction["amount"] == 1000


def test_one_callback_delivered_20_times_at_once_through_4_worker_processes_credits_once(pg_system):
    pg_system.start_api(workers=2, threads=8)
    pg_system.start_workers(processes=4, threads=4)
    account_id, key = pg_system.create_account()
    with db.connection():
        topup, _ = topups.create_topup(account_id, amount=250, phone="254712345678",
                                       reference=None, metadata={})
        pushes.claim_push(topup.id)
        pushes.record_push_accepted(topup.id, checkout_request_id="ws_CO_CONCURRENT_1",
                                    merchant_request_id="m-1", query_after_s=3600)
    callback = {"Body": {"stkCallback": {
        "MerchantRequestID": "m-1", "CheckoutRequestID": "ws_CO_CONCURRENT_1", "ResultCode": 0,
        "ResultDesc": "The service request is processed successfully.",
        "CallbackMetadata": {"Item": [
            {"Name": "Amount", "Value": 250.00}, {"Name": "MpesaReceiptNumber", "Value": "QWE1234567"},
            {"Name": "Balance"}, {"Name": "TransactionDate", "Value": 20261128100000},
            {"Name": "PhoneNumber", "Value": 254712345678}]}}}}

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda _: pg_system.post_callback(callback), range(20)))
    assert [a.status_code for a in answers] == [200] * 20

    def all_applied():
        with db.connection():
            return Callback.select().where(Callback.applied_at.is_null(False)).count() == 20
    wait_until(all_applied, timeout=60, message="the 20 callbacks to be applied")

    with db.connection():
        assert LedgerEntry.select().count() == 1
        assert Wallet.get(Wallet.account == account_id).balance_cents == 25_000
        assert TopUp.get(TopUp.id == topup.id).status == "succeeded"
        outcomes = sorted(c.outcome for c in Callback.select())
    assert outcomes == ["credited"] + ["duplicate"] * 19


def test_the_token_is_fetched_once_for_50_topups_across_processes_and_once_more_after_expiry(
        pg_system, simulator):
    pg_system.start_api(workers=2, threads=4)
    pg_system.start_workers(processes=3, threads=4)
    _, key = pg_system.create_account()

    def run(phones):
        with ThreadPoolExecutor(max_workers=10) as pool:
            created = list(pool.map(lambda p: pg_system.topup(key, 10, p), phones))
        for topup in created:
            done = wait_until(lambda: settled(pg_system, key, topup["id"]), timeout=60,
                              message=f"top-up {topup['id']} to settle")
            assert done["status"] == "succeeded"

    run([f"07123450{n:02d}" for n in range(50)])
    assert sim_call(simulator, "GET", "/__sim/stats")["oauth"] == 1

    sim_call(simulator, "POST", "/__sim/expire-tokens")
    run([f"07123451{n:02d}" for n in range(10)])
    stats = sim_call(simulator, "GET", "/__sim/stats")
    assert stats["oauth"] == 2
    assert stats["stkpush"] >= 60
