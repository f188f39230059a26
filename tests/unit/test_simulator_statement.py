"""The simulator exports the organisation-portal statement of what it processed."""
from __future__ import annotations

import pytest
import requests

from daraja.client import DarajaClient
from daraja.config import DarajaConfig
from ledger.statement import CHARGE, PAYMENT, parse
from simulator.server import SimulatorConfig, SimulatorServer
from simulator.statement import COLUMNS
from tests.waiting import wait_until


@pytest.fixture
def sim():
    server = SimulatorServer(port=0, config=SimulatorConfig(callback_delay_s=0.01)).start()
    yield server
    server.stop()


def client(sim, callback_url="http://127.0.0.1:9/nobody-listens"):
    return DarajaClient(DarajaConfig(
        base_url=sim.url, consumer_key="sim-consumer-key", consumer_secret="sim-consumer-secret",
        shortcode="174379", passkey=SimulatorConfig().passkey, callback_url=callback_url))


def export(sim, expected_rows):
    """The statement once it has ``expected_rows`` rows (the simulator settles a payment a
    moment after its push): the answer and the statement parsed."""
    def exported():
        answer = requests.get(sim.url + "/__sim/statement.csv", timeout=5)
        parsed = parse(answer.content)
        return (answer, parsed) if len(parsed.rows) >= expected_rows else None
    return wait_until(exported, timeout=5, interval=0.02,
                      message=f"{expected_rows} rows in the statement")


def test_the_statement_lists_every_paid_transaction_whatever_became_of_its_callback(sim):
    daraja = client(sim)
    requests.post(sim.url + "/__sim/config", json={"drop_callback_rate": 0.5, "seed": 3},
                  timeout=5)
    paid = [daraja.stk_push(amount=100 + n, phone=f"25471200{n:04d}", account_reference=f"R{n}")
            for n in range(6)]
    daraja.stk_push(amount=50, phone="254700001032", account_reference="CANCELLED")

    answer, statement = export(sim, expected_rows=7)   # six payments and one charge

    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/csv")
    assert answer.content.startswith(b"\xef\xbb\xbf" + ",".join(COLUMNS).encode())
    receipts = {t["checkout_request_id"]: t["receipt"]
                for t in requests.get(sim.url + "/__sim/transactions", timeout=5).json()["data"]}
    assert sorted(r.receipt for r in statement.payments) == sorted(
        receipts[p.checkout_request_id] for p in paid)
    by_receipt = {r.receipt: r for r in statement.payments}
    for n, push in enumerate(paid):
        row = by_receipt[receipts[push.checkout_request_id]]
        assert (row.paid_in_cents, row.phone, row.account_no) == (
            (100 + n) * 100, f"25471200{n:04d}", f"R{n}")


def test_one_payment_carries_a_linked_charge_that_is_not_a_payment(sim):
    daraja = client(sim)
    for n in range(3):
        daraja.stk_push(amount=1000, phone=f"25471300{n:04d}", account_reference="X")

    _, statement = export(sim, expected_rows=4)

    [charge] = [r for r in statement.rows if r.kind == CHARGE]
    assert charge.linked_to in {r.receipt for r in statement.payments}
    assert charge.withdrawn_cents > 0 and charge.paid_in_cents == 0
    assert sum(r.kind == PAYMENT for r in statement.rows) == 3


def test_a_callback_that_understates_the_amount_does_not_change_what_the_statement_shows(sim):
    client(sim).stk_push(amount=1000, phone="254700010012", account_reference="X")

    _, statement = export(sim, expected_rows=2)

    [payment] = statement.payments
    assert payment.paid_in_cents == 100_000   # the customer paid 1000; the callback said 999


def test_a_thousand_shillings_is_written_with_a_thousands_separator_in_nairobi_time(sim):
    client(sim).stk_push(amount=1000, phone="254712345678", account_reference="X")

    answer, _ = export(sim, expected_rows=2)

    line = answer.content.decode("utf-8-sig").splitlines()[-1]
    assert '"1,000.00"' in line
    assert line.split(",")[1].count("-") == 2     # DD-MM-YYYY HH:MM:SS
