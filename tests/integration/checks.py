"""What the outcome and recovery tests hold the gateway to: every top-up as the simulator
decided, credits equal to the simulator's payments to the cent, nothing credited twice.

Read through the public API (what a client would see) and the simulator's own record
(`/__sim/transactions`), plus the ledger's tables where only they can tell.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter

import requests

from ledger import db
from ledger.models import Callback, OrphanPayment, TopUpEvent
from tests.integration.system import sim_call
from tests.waiting import wait_until

# Short delays so that a dropped callback is settled by STK Query within seconds, and
# sweeps that re-drive lost work act within seconds rather than minutes.
FAST = {
    "STK_QUERY_AFTER_S": "2",
    "STK_QUERY_BACKOFF_S": "0.5",
    "SWEEP_UNSENT_PUSH_AFTER_S": "3",
    "SWEEP_RELEASED_PUSH_AFTER_S": "10",
    "SWEEP_ABANDONED_PUSH_AFTER_S": "20",
    "SWEEP_UNAPPLIED_CALLBACK_AFTER_S": "3",
    "SWEEP_QUERY_GRACE_S": "3",
    "SWEEP_REDRIVE_EVERY_S": "5",
}


def submit(system, key, amount: int, phone: str, *, deadline_s: float = 60,
           refusals: list | None = None, fields: dict | None = None) -> dict:
    """POST /v1/topups as a careful client does: one Idempotency-Key for the request, and
    the same request again after a 429 (honouring Retry-After), a 503 or a lost answer,
    until the API accepts it (202). Each answer that was not a 202 is added to ``refusals``.
    ``fields``: more of the request's fields (``reference``, ``metadata``)."""
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4())}
    body = {"provider": "mpesa", "amount": amount, "phone": phone, **(fields or {})}
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            response = requests.post(system.api_url + "/v1/topups", json=body, headers=headers,
                                     timeout=10)
        except requests.RequestException:
            response = None
        if response is not None and response.status_code == 202:
            return response.json()
        if refusals is not None:
            refusals.append(response.status_code if response is not None else "no answer")
        if response is not None and response.status_code not in (429, 503):
            raise AssertionError(f"top-up refused: {response.status_code} {response.text}")
        if time.monotonic() > deadline:
            raise AssertionError(f"top-up not accepted within {deadline_s}s: "
                                 f"{response.status_code if response is not None else 'no answer'}")
        retry_after = response.headers.get("Retry-After") if response is not None else None
        # the client's own back-off, as Retry-After asks: what is tested is that it is honoured
        time.sleep(min(float(retry_after or 0.2), 2.0))


def all_pages(system, key, path, **params) -> list[dict]:
    """Every item of a paged list, following ``starting_after``."""
    items, after = [], None
    while True:
        query = "&".join(f"{k}={v}" for k, v in {"limit": 100, **params}.items())
        page = system.get(key, f"{path}?{query}" + (f"&starting_after={after}" if after else ""))
        items += page["data"]
        if not page["has_more"]:
            return items
        after = page["data"][-1]["id"]


def nothing_pending(system, key) -> bool:
    return not system.get(key, "/v1/topups?status=pending&limit=1")["data"]


def simulator_transactions(simulator) -> dict[str, dict]:
    """The simulator's transactions by CheckoutRequestID."""
    return {t["checkout_request_id"]: t
            for t in sim_call(simulator, "GET", "/__sim/transactions")["data"]}


def every_callback_delivered_and_applied(simulator) -> bool:
    """The simulator has made every callback POST it planned (late ones too), and the
    gateway has applied every callback it stored."""
    transactions = simulator_transactions(simulator).values()
    if any(t["callbacks_delivered"] + t["callback_failures"] < t["callbacks_planned"]
           for t in transactions):
        return False
    with db.connection():
        return not Callback.select().where(Callback.applied_at.is_null()).exists()


def wait_until_settled_and_quiet(system, key, simulator, *, timeout: float) -> None:
    wait_until(lambda: nothing_pending(system, key), timeout=timeout,
               interval=0.5, message="every top-up to leave `pending`")
    wait_until(lambda: every_callback_delivered_and_applied(simulator), timeout=30,
               interval=0.5, message="every planned callback to be delivered and applied")


def credited_times() -> Counter:
    """How many `credited` events each top-up has in its history (must be at most 1)."""
    with db.connection():
        return Counter(e.topup_id for e in TopUpEvent.select(TopUpEvent.topup)
                       .where(TopUpEvent.kind == "credited"))


def assert_every_topup_is_as_the_simulator_decided(system, key, simulator, topup_ids) -> dict:
    """Each top-up succeeded or failed exactly as the simulator decided, was pushed once,
    and the wallet holds the simulator's successful payments to the cent, each credited
    once. Returns the top-ups by id."""
    topups = {t["id"]: t for t in all_pages(system, key, "/v1/topups")}
    assert set(topup_ids) <= set(topups), "a top-up the API accepted is gone"
    topups = {i: topups[i] for i in topup_ids}
    transactions = simulator_transactions(simulator)

    # every top-up was pushed, once, and Daraja's transaction is the one it recorded
    by_phone = Counter(t["phone"] for t in transactions.values())
    assert all(by_phone[t["phone"]] == 1 for t in topups.values()), "a phone was prompted twice"
    assert all(t["checkout_request_id"] in transactions for t in topups.values())

    wrong = []
    for topup in topups.values():
        txn = transactions[topup["checkout_request_id"]]
        if txn["paid"]:
            # a success learnt by query has no receipt until a callback brings it
            receipt = None if txn["callbacks_delivered"] == 0 else txn["receipt"]
            expected = ("succeeded", None, receipt)
        else:
            expected = ("failed", str(txn["result_code"]), None)
        actual = (topup["status"], topup["failure_code"], topup["mpesa_receipt"])
        if actual != expected or txn["amount"] != topup["amount"]:
            wrong.append((topup["id"], txn["decisions"], expected, actual))
    assert wrong == [], f"{len(wrong)} top-ups differ from the simulator: {wrong[:5]}"

    paid = [t for t in transactions.values() if t["paid"]
            and t["checkout_request_id"] in {x["checkout_request_id"] for x in topups.values()}]
    wallet = system.get(key, "/v1/wallet")
    assert wallet["balance_cents"] == sum(t["amount"] * 100 for t in paid)

    entries = all_pages(system, key, "/v1/wallet/transactions")
    succeeded = {i for i, t in topups.items() if t["status"] == "succeeded"}
    assert sorted(e["topup"] for e in entries) == sorted(succeeded), "an entry twice, or missing"
    assert all(e["amount_cents"] == topups[e["topup"]]["amount"] * 100 for e in entries)
    receipts = [e["mpesa_receipt"] for e in entries if e["mpesa_receipt"]]
    assert len(receipts) == len(set(receipts)), "a receipt credited twice"
    assert max(credited_times().values(), default=0) <= 1
    with db.connection():
        assert OrphanPayment.select().count() == 0
    return topups
