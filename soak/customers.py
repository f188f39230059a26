"""The soak's customers: each planned top-up submitted at its planned time, as a careful client
submits it, and a forged success callback for the top-ups the plan says are forged.

Submissions run on a pool of threads so that a slow answer (PostgreSQL restarting, a stopped
worker holding a wallet's lock) delays only its own customer; the pace is kept by the
dispatcher, which hands each top-up to the pool at its time.
"""
from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from soak.observed import Forgery, Submission
from soak.plan import Plan, PlannedTopUp
from tests.integration.checks import submit
from tests.integration.system import CALLBACK_TOKEN
from tests.waiting import WaitTimedOut, wait_until

CUSTOMER_THREADS = 16
# A request is retried (same Idempotency-Key) through any outage the plan holds: a crashed
# PostgreSQL's recovery, a restart on a busy machine.
SUBMIT_DEADLINE_S = 180
# A forgery waits this long for its top-up's CheckoutRequestID (forged with the real one, it
# would settle the top-up if it were let in); without one by then it invents one.
FORGERY_WAIT_S = 10


def forged_token(form: str, salt: int, token: str = CALLBACK_TOKEN) -> str:
    """The path segment a forger uses instead of the callback token."""
    if form == "missing":
        return ""
    digits = "0123456789abcdef"
    if form == "stranger":
        return "".join(random.Random(salt).choice(digits) for _ in token)
    position = salt % len(token)
    replacement = digits[(digits.index(token[position].lower()) + 1 + salt % 15) % 16]
    return token[:position] + replacement + token[position + 1:]


def forged_callback(planned: PlannedTopUp, checkout_request_id: str) -> dict:
    """A success callback as Daraja would send it for this top-up, with a forged receipt."""
    return {"Body": {"stkCallback": {
        "MerchantRequestID": "forged-" + planned.reference,
        "CheckoutRequestID": checkout_request_id, "ResultCode": 0,
        "ResultDesc": "The service request is processed successfully.",
        "CallbackMetadata": {"Item": [
            {"Name": "Amount", "Value": planned.amount},
            {"Name": "MpesaReceiptNumber", "Value": planned.forged_receipt},
            {"Name": "Balance"},
            {"Name": "TransactionDate", "Value": 20260101120000},
            {"Name": "PhoneNumber", "Value": int(planned.phone)}]}}}}


class Customers:
    def __init__(self, system, plan: Plan, keys: list[str], stop: threading.Event):
        self.system, self.plan, self.keys, self.stop = system, plan, keys, stop
        self._lock = threading.Lock()
        self._submissions: list[Submission] = []
        self._forgeries: list[Forgery] = []
        self.handed_out = 0
        self.max_lag_s = 0.0
        self._thread: threading.Thread | None = None

    # --- what the run reads -------------------------------------------------------------------
    @property
    def submissions(self) -> list[Submission]:
        with self._lock:
            return list(self._submissions)

    @property
    def forgeries(self) -> list[Forgery]:
        with self._lock:
            return list(self._forgeries)

    @property
    def finished(self) -> int:
        with self._lock:
            return len(self._submissions)

    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    # --- running ------------------------------------------------------------------------------
    def start(self, load_started: float) -> None:
        self._thread = threading.Thread(target=self._dispatch, args=(load_started,),
                                        name="soak-customers", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _dispatch(self, load_started: float) -> None:
        with ThreadPoolExecutor(CUSTOMER_THREADS, thread_name_prefix="soak-customer") as pool:
            for planned in self.plan.topups:
                # pacing, not settling: each top-up leaves at its planned time
                if self.stop.wait(max(0.0, load_started + planned.at_s - time.monotonic())):
                    break
                self.handed_out += 1
                pool.submit(self._customer, planned, load_started)

    def _customer(self, planned: PlannedTopUp, load_started: float) -> None:
        lag = time.monotonic() - (load_started + planned.at_s)
        key = self.keys[planned.account]
        refusals: list = []
        try:
            created = submit(self.system, key, planned.amount, planned.phone,
                             deadline_s=SUBMIT_DEADLINE_S, refusals=refusals,
                             fields={"reference": planned.reference})
            submission = Submission(planned.reference, created["id"], retries=len(refusals))
        except Exception as exc:  # noqa: BLE001 - a refusal is a finding, reported at the end
            submission = Submission(planned.reference, None, f"{type(exc).__name__}: "
                                    f"{str(exc)[:200]}", len(refusals))
        with self._lock:
            self._submissions.append(submission)
            self.max_lag_s = max(self.max_lag_s, lag)
        if planned.forgery and submission.topup_id and not self.stop.is_set():
            self._forge(planned, key, submission.topup_id)

    def _forge(self, planned: PlannedTopUp, key: str, topup_id: str) -> None:
        def checkout_request_id():
            try:
                return self.system.get(key, f"/v1/topups/{topup_id}")["checkout_request_id"]
            except Exception:  # noqa: BLE001 - an outage: ask again
                return None
        try:
            checkout = wait_until(checkout_request_id, timeout=FORGERY_WAIT_S, interval=0.25,
                                  message="the top-up's CheckoutRequestID")
        except WaitTimedOut:
            checkout = f"ws_CO_FORGED{planned.index:07d}"
        token = forged_token(planned.forgery, planned.forgery_salt)
        status: int | str = "not sent"
        for _ in range(3):   # a lost answer is sent again, as a forger would
            try:
                answer = requests.post(f"{self.system.api_url}/daraja/callback/{token}",
                                       data=json.dumps(forged_callback(planned, checkout)),
                                       headers={"Content-Type": "application/json"}, timeout=10)
                status = answer.status_code
                break
            except requests.RequestException as exc:
                status = type(exc).__name__
        with self._lock:
            self._forgeries.append(Forgery(planned.reference, planned.forgery, checkout,
                                           planned.forged_receipt, status))
