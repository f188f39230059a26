"""topupctl daraja register-urls | register-pull | pull, and topupctl simulator pay, against the
simulator over real HTTP."""
import json
import threading

import pytest
from fakeredis import TcpFakeServer

from ledger import db
from ledger.models import Account, PullRun
from tests.unit.c2b_support import balance, credits_of
from tests.unit.conftest import CALLBACK_TOKEN
from topupctl import cli

pytestmark = pytest.mark.both_databases


@pytest.fixture
def redis_url():
    """An in-process Redis on a TCP port: the commands share the fleet's Daraja token there."""
    server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield "redis://127.0.0.1:%d/0" % server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def topupctl(settings, database, daraja_sim, redis_url, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DARAJA_BASE_URL", daraja_sim.url)
    monkeypatch.setenv("DARAJA_CALLBACK_TOKEN", CALLBACK_TOKEN)
    monkeypatch.setenv("PUBLIC_BASE_URL", "http://127.0.0.1:9")   # nothing answers there

    def run(*argv):
        cli.main(list(argv))
        return json.loads(capsys.readouterr().out)

    return run


def test_register_urls_registers_both_urls_and_never_prints_the_token(topupctl, daraja_sim):
    printed = topupctl("daraja", "register-urls", "--response-type", "Cancelled")
    [registered] = daraja_sim.daraja.paybill.registrations()
    assert registered["response_type"] == "Cancelled" and registered["version"] == "v2"
    assert registered["confirmation_url"] == \
        f"http://127.0.0.1:9/daraja/c2b/confirmation/{CALLBACK_TOKEN}"
    assert registered["validation_url"] == \
        f"http://127.0.0.1:9/daraja/c2b/validation/{CALLBACK_TOKEN}"
    assert printed["registered"] and printed["shortcode"] == "174379"
    assert CALLBACK_TOKEN not in json.dumps(printed)
    assert printed["confirmation_url"].endswith("/daraja/c2b/confirmation/{DARAJA_CALLBACK_TOKEN}")


def test_register_pull_says_when_the_paybill_was_registered_before(topupctl):
    assert topupctl("daraja", "register-pull", "--nominated-number", "0712 345 678")["already"] \
        is False
    assert topupctl("daraja", "register-pull", "--nominated-number", "0712345678")["already"]


def test_register_pull_refuses_a_nominated_number_that_is_no_phone(topupctl, capsys):
    with pytest.raises(SystemExit) as exit_:
        topupctl("daraja", "register-pull", "--nominated-number", "12")
    assert exit_.value.code == 2 and "Kenyan mobile number" in capsys.readouterr().err


def test_a_customer_payment_lost_on_the_way_is_credited_by_daraja_pull(topupctl, account):
    with db.connection():
        number = Account.get(Account.id == account["id"]).account_number
    topupctl("daraja", "register-urls")
    paid = topupctl("simulator", "pay", number.lower(), "120.50", "--phone", "0712 345 678")
    assert (paid["status"], paid["validation"], paid["confirmations_delivered"]) == (
        "paid", "unreachable", 0)          # the gateway's URLs answer nobody here
    assert paid["phone"] == "254712345678"

    pulled = topupctl("daraja", "pull")
    again = topupctl("daraja", "pull", "--since", "2026-01-01")

    assert (pulled["transactions"], pulled["fed"], pulled["outcomes"]) == (1, 1, {"credited": 1})
    assert (again["transactions"], again["fed"]) == (1, 0)
    assert balance(account["id"]) == 12_050 and credits_of(paid["receipt"]) == 1
    with db.connection():
        assert PullRun.select().count() == 2


def test_pulling_from_a_daraja_that_is_down_exits_non_zero_and_says_why(
        topupctl, monkeypatch, capsys):
    monkeypatch.setenv("DARAJA_BASE_URL", "http://127.0.0.1:9")
    with pytest.raises(SystemExit) as exit_:
        topupctl("daraja", "pull")
    assert exit_.value.code == 1 and "ConnectionFailed" in capsys.readouterr().err


def test_simulator_pay_says_when_no_urls_are_registered(topupctl):
    with pytest.raises(SystemExit, match="register-urls"):
        topupctl("simulator", "pay", "K7QM29", "10")
