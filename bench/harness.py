"""What every measurement shares: the stack, the load generator, the machine's load around a
figure, the ledger bound in this process (to set up rows and read results), and the report's
notes."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path

from bench.load import Load
from bench.machine import Machine
from bench.stack import CALLBACK_TOKEN, Stack


class Bench:
    def __init__(self, out: Path, *, quick: bool):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.quick = quick
        self.stack = Stack(self.out / "stack")
        self.load = Load(self.out / "load")
        self._run_number = 9

    # --- life -----------------------------------------------------------------------------
    def start(self) -> "Bench":
        self.stack.start()
        main = self.stack.new_database("bench_main")
        # This process is a client of the ledger and the broker too (to set up rows, enqueue
        # messages and read results): it reads the same settings the processes do.
        os.environ.update({k: v for k, v in self.stack.env(main).items()
                           if k in ("DATABASE_URL", "REDIS_URL", "DARAJA_BASE_URL",
                                    "DARAJA_CALLBACK_TOKEN", "PUBLIC_BASE_URL")})
        return self

    def close(self) -> None:
        self.stack.close()

    def run_number(self) -> int:
        """A fresh two-digit number for a load's phones and ids (10..99)."""
        self._run_number += 1
        if self._run_number > 99:
            self._run_number = 10
        return self._run_number

    # --- measuring ------------------------------------------------------------------------
    def machine(self) -> Machine:
        """``with bench.machine() as m:`` around a figure: what else the machine did."""
        return Machine()

    # --- the ledger, from this process ----------------------------------------------------
    def bind(self, url: str):
        from ledger import db
        return db.bind(url)

    @contextlib.contextmanager
    def ledger(self, url: str):
        from ledger import db
        self.bind(url)
        with db.connection():
            yield

    def account(self, url: str, name: str, keys: int = 1) -> tuple[str, list[str], int]:
        """(account id, API keys, wallet id) of a new account."""
        from ledger import accounts
        from ledger.models import Wallet
        with self.ledger(url):
            account, key = accounts.create_account(name)
            extra = [accounts.create_api_key(account.id)[1] for _ in range(keys - 1)]
            wallet = Wallet.get(Wallet.account == account.id)
        return account.id, [key, *extra], wallet.id

    def pending_topups_with_callbacks(self, url: str, account_id: str, n: int,
                                      tag: str) -> list[int]:
        """``n`` top-ups pushed and waiting, each with its paid callback stored (as the API
        stores it): the work the crediting workers are given. Returns the callbacks' seqs."""
        from ledger.models import Callback, TopUp, utcnow
        assert len(tag) == 3, "a 3-character tag: receipts are the tag and 7 digits"
        now = utcnow()
        seqs = []
        with self.ledger(url):
            for start in range(0, n, 1000):
                ids = range(start, min(n, start + 1000))
                TopUp.insert_many([{
                    "id": f"tu_{tag}{i:07d}", "account": account_id, "amount": 1000,
                    "phone": bench_phone(i), "reference": f"{tag}{i}"[:12],
                    "status": "pending", "push_state": "sent", "push_attempts": 1,
                    "checkout_request_id": f"ws_CO_{tag}{i:07d}", "pushed_at": now,
                    "created_at": now, "updated_at": now} for i in ids]).execute()
                rows = Callback.insert_many([{
                    "body": json.dumps(callback_body(f"ws_CO_{tag}{i:07d}", f"{tag}{i:07d}",
                                                     1000, bench_phone(i))),
                    "remote_addr": "127.0.0.1", "well_formed": True,
                    "checkout_request_id": f"ws_CO_{tag}{i:07d}", "result_code": "0",
                    "received_at": now} for i in ids]).returning(Callback.seq).execute()
                seqs.extend(row[0] if isinstance(row, tuple) else row.seq for row in rows)
        return seqs

    def notes_for_code(self) -> dict:
        """Which code was measured: HEAD, and whether the working tree held uncommitted
        changes (it is shared with other engineers)."""
        import subprocess
        root = Path(__file__).resolve().parent.parent
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root,
                                capture_output=True, text=True).stdout.splitlines()
        others = [line[3:] for line in status if not line[3:].startswith("bench/")]
        return {"head": head, "uncommitted_paths_outside_bench": len(others),
                "uncommitted_sample": others[:12]}


def bench_phone(i: int) -> str:
    """2547 9D NNNNNN: a valid Safaricom number outside the simulator's magic ranges."""
    return f"25479{i // 10**6 % 10}{i % 10**6:06d}"


def callback_body(checkout_request_id: str, receipt: str, amount: int, phone: str) -> dict:
    """A paid STK callback, as the simulator (and Safaricom) sends it."""
    return {"Body": {"stkCallback": {
        "MerchantRequestID": "29115-34620561-1", "CheckoutRequestID": checkout_request_id,
        "ResultCode": 0, "ResultDesc": "The service request is processed successfully.",
        "CallbackMetadata": {"Item": [
            {"Name": "Amount", "Value": amount}, {"Name": "MpesaReceiptNumber", "Value": receipt},
            {"Name": "Balance"}, {"Name": "TransactionDate", "Value": 20261128100512},
            {"Name": "PhoneNumber", "Value": int(phone)}]}}}}


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["Bench", "CALLBACK_TOKEN", "callback_body", "utc_now_iso"]
