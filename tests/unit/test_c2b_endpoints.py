"""Daraja's two C2B URLs: validation answers from the ledger alone; a confirmation is stored
as received, acknowledged, then credited once by a worker, or kept as an orphan payment."""
import dataclasses
import ipaddress
import json

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from app import create_app
from ledger import db
from ledger.models import Event, TopUpEvent
from tests.messages import taken
from tests.unit.c2b_support import (
    CONFIRMATION, VALIDATION, account_number, applied, balance, c2b_body, c2b_topups, confirm,
    credits_of, orphans, stored,
)
from tests.unit.conftest import CALLBACK_TOKEN, FakeRedis
from topupctl import cli

pytestmark = pytest.mark.both_databases


def verdict(client, body) -> str:
    response = client.post(VALIDATION, data=body, content_type="application/json")
    assert response.status_code == 200
    return response.get_json()["ResultCode"]


# --- validation ------------------------------------------------------------------------------

def test_validation_accepts_a_known_account_number_however_it_is_typed(client, account):
    number = account_number(account["id"])
    assert verdict(client, c2b_body("RKL51ZDR4F", number)) == "0"
    assert verdict(client, c2b_body("RKL51ZDR4F", f" {number[:3].lower()}-{number[3:]} ")) == "0"


def test_validation_refuses_an_unknown_account_number_with_c2b00012(client, account):
    response = client.post(VALIDATION, data=c2b_body("RKL51ZDR4F", "NOBODY"))
    assert response.get_json() == {"ResultCode": "C2B00012",
                                   "ResultDesc": "Rejected: invalid account number"}


@pytest.mark.parametrize("amount", ["0.00", "0.50", "250000.01", "-5", "lots", ""])
def test_validation_refuses_an_amount_out_of_range_with_c2b00013(client, account, amount):
    assert verdict(client, c2b_body("RKL51ZDR4F", account_number(account["id"]), amount)) \
        == "C2B00013"


def test_validation_accepts_the_edges_of_the_range(client, account):
    number = account_number(account["id"])
    assert verdict(client, c2b_body("RKL51ZDR4F", number, "1")) == "0"
    assert verdict(client, c2b_body("RKL51ZDR4F", number, "250000.00")) == "0"


def test_validation_refuses_what_is_not_a_payment_with_c2b00016(client):
    assert verdict(client, b"<xml/>") == "C2B00016"
    assert verdict(client, b"[1, 2]") == "C2B00016"


def test_validation_stores_nothing_and_never_calls_daraja(
        settings, database, stub_broker, account, daraja_sim):
    app = create_app({"SETTINGS": dataclasses.replace(settings, daraja_base_url=daraja_sim.url),
                      "BROKER": stub_broker, "REDIS": FakeRedis(), "BIND_DATABASE": False,
                      "TESTING": True})
    client = app.test_client()
    assert verdict(client, c2b_body("RKL51ZDR4F", account_number(account["id"]))) == "0"
    assert verdict(client, c2b_body("RKL51ZDR4F", "NOBODY")) == "C2B00012"
    assert stored() == [] and c2b_topups(account["id"]) == []
    calls = daraja_sim.daraja.stats()
    assert (calls["oauth"], calls["stkpush"], calls["stkquery"], calls["pulls"]) == (0, 0, 0, 0)


# --- confirmation ----------------------------------------------------------------------------

def test_a_confirmation_is_stored_as_received_and_queued_once_answered(
        client, account, stub_broker):
    body = c2b_body("RKL51ZDR4F", account_number(account["id"]))
    with client.post(CONFIRMATION, data=body, content_type="application/json") as response:
        assert response.status_code == 200
        assert response.get_json() == {"ResultCode": 0, "ResultDesc": "Accepted"}
        rows = stored()
        assert [r.body.encode() for r in rows] == [body]
        assert rows[0].trans_id == "RKL51ZDR4F" and rows[0].applied_at is None
        assert taken(stub_broker, "callbacks") == []
    [message] = taken(stub_broker, "callbacks")
    assert (message.actor_name, message.args) == ("apply_c2b", (rows[0].seq,))


def test_a_confirmation_credits_the_wallet_once_as_a_c2b_topup(
        client, account, stub_broker, stub_worker):
    number = account_number(account["id"])
    for _ in range(3):
        assert confirm(client, c2b_body("RKL51ZDR4F", number, "100.00"))[0] == 200
    applied(stub_broker, stub_worker)

    assert balance(account["id"]) == 10_000 and credits_of("RKL51ZDR4F") == 1
    [topup] = c2b_topups(account["id"])
    api = client.get(f"/v1/topups/{topup.id}", headers=account["auth"]).get_json()
    assert {k: api[k] for k in ("status", "channel", "amount", "mpesa_receipt", "phone",
                                "reference", "checkout_request_id", "flagged")} == {
        "status": "succeeded", "channel": "c2b", "amount": 100, "mpesa_receipt": "RKL51ZDR4F",
        "phone": "2547 ***** 126", "reference": number, "checkout_request_id": None,
        "flagged": None}
    with db.connection():
        events = list(Event.select().where(Event.topup == topup.id))
        kinds = [e.kind for e in TopUpEvent.select().where(TopUpEvent.topup == topup.id)]
    assert [e.type for e in events] == ["wallet.top_up"]
    assert json.loads(events[0].data)["topup"]["channel"] == "c2b"
    assert kinds.count("credited") == 1 and kinds.count("duplicate_success") == 2
    # two worker threads: any of the three may be the one that credits
    assert sorted(r.outcome for r in stored()) == ["credited", "duplicate", "duplicate"]


def test_an_account_number_typed_loosely_credits_that_wallet(
        client, account, stub_broker, stub_worker):
    number = account_number(account["id"])
    confirm(client, c2b_body("RKL51ZDR4F", f"{number[:2].lower()} {number[2:4]}-{number[4:]}"))
    applied(stub_broker, stub_worker)
    assert balance(account["id"]) == 10_000


def test_an_amount_with_cents_is_credited_to_the_cent(
        client, account, stub_broker, stub_worker):
    confirm(client, c2b_body("RKL51ZDR4F", account_number(account["id"]), "1,099.55"))
    applied(stub_broker, stub_worker)
    assert balance(account["id"]) == 109_955
    [topup] = c2b_topups(account["id"])
    assert (topup.amount, topup.credited_cents, topup.flagged) == (1099, 109_955, None)


def test_an_unknown_account_number_is_kept_as_an_orphan_and_listed(
        client, account, stub_broker, stub_worker, settings, monkeypatch, capsys):
    for _ in range(2):
        confirm(client, c2b_body("RKL51ZDR4F", "nobody-1"))
    applied(stub_broker, stub_worker)

    assert balance(account["id"]) == 0 and c2b_topups(account["id"]) == []
    [orphan] = orphans()
    assert (orphan.mpesa_receipt, orphan.amount_cents, orphan.checkout_request_id,
            orphan.bill_ref_number) == ("RKL51ZDR4F", 10_000, None, "nobody-1")
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    cli.main(["orphans", "--json"])
    [listed] = json.loads(capsys.readouterr().out)["data"]
    assert listed["mpesa_receipt"] == "RKL51ZDR4F" and listed["bill_ref_number"] == "nobody-1"
    cli.main(["orphans"])
    assert "paybill A/C 'nobody-1'" in capsys.readouterr().out


def test_a_confirmation_for_another_paybill_is_quarantined_not_credited(
        client, account, stub_broker, stub_worker):
    confirm(client, c2b_body("RKL51ZDR4F", account_number(account["id"]), shortcode="600000"))
    applied(stub_broker, stub_worker)
    assert balance(account["id"]) == 0 and orphans() == []
    assert stored()[0].outcome == "quarantined:for another paybill (600000)"


@pytest.mark.parametrize("amount", ["0.00", "250000.01", "1.005"])
def test_an_amount_m_pesa_never_pays_is_quarantined(
        client, account, stub_broker, stub_worker, amount):
    confirm(client, c2b_body("RKL51ZDR4F", account_number(account["id"]), amount))
    applied(stub_broker, stub_worker)
    assert balance(account["id"]) == 0
    assert stored()[0].outcome.startswith("quarantined:amount")


def test_a_body_that_is_not_a_confirmation_answers_400_and_is_kept(client, stub_broker):
    with client.post(CONFIRMATION, data=b'{"Body": {}}', content_type="application/json") as r:
        assert r.status_code == 400 and r.mimetype == "application/problem+json"
    assert [(s.well_formed, s.outcome) for s in stored()] == [(False, "malformed")]
    assert taken(stub_broker, "callbacks") == []


@pytest.mark.parametrize("path", [CONFIRMATION, VALIDATION])
def test_a_wrong_token_answers_404_and_stores_nothing(client, account, path):
    response = client.post(path.replace(CALLBACK_TOKEN, "0" * len(CALLBACK_TOKEN)),
                           data=c2b_body("RKL51ZDR4F", account_number(account["id"])))
    assert response.status_code == 404 and stored() == []


@pytest.mark.parametrize("path", [CONFIRMATION, VALIDATION])
def test_an_address_outside_the_allowlist_answers_403(settings, database, stub_broker, path):
    allowing = dataclasses.replace(settings, daraja_callback_allowed_ips=(
        ipaddress.ip_network("196.201.214.0/24"),))
    app = create_app({"SETTINGS": allowing, "BROKER": stub_broker, "REDIS": FakeRedis(),
                      "BIND_DATABASE": False, "TESTING": True})
    client = app.test_client()
    assert client.post(path, data=c2b_body("RKL51ZDR4F", "K7QM29")).status_code == 403
    assert client.post(path, data=c2b_body("RKL51ZDR4F", "K7QM29"),
                       environ_base={"REMOTE_ADDR": "196.201.214.200"}).status_code in (200,)
    assert all(s.remote_addr == "196.201.214.200" for s in stored())


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=12)
_FIELDS = st.fixed_dictionaries({}, optional={
    name: _JSON for name in ("TransID", "TransAmount", "BillRefNumber", "MSISDN",
                             "BusinessShortCode", "TransTime", "FirstName")})


@hypothesis_settings(max_examples=150, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(HealthCheck))
@given(body=st.one_of(st.binary(max_size=300), _JSON.map(lambda v: json.dumps(v).encode()),
                      _FIELDS.map(lambda v: json.dumps(v).encode())))
def test_no_body_gets_a_5xx_and_none_credits_without_being_a_payment(
        client, stub_broker, stub_worker, body):
    for path in (VALIDATION, CONFIRMATION):
        with client.post(path, data=body, content_type="application/json") as response:
            assert response.status_code < 500, body
    applied(stub_broker, stub_worker)
    assert all(s.applied_at is not None for s in stored())


def test_validation_accepts_the_reference_of_a_push_that_asked_for_that_amount(client, account):
    from ledger import pushes, topups
    with db.connection():
        topup, _ = topups.create_topup(account["id"], amount=500, phone="254712345678",
                                       reference="INV42", metadata={})
        pushes.claim_push(topup.id)
    assert verdict(client, c2b_body("RKL51ZDR4F", "INV42", "500.00")) == "0"
    assert verdict(client, c2b_body("RKL51ZDR4F", "INV42", "499.00")) == "C2B00012"


def test_a_confirmation_whose_message_was_lost_is_credited_after_the_sweep(
        client, account, stub_broker, stub_worker, fake_redis, monkeypatch):
    import datetime as dt

    from workers import c2b as c2b_actors, scheduler, sweeps

    def redis_down(*args, **kwargs):
        raise ConnectionError("Redis is down")
    monkeypatch.setattr(c2b_actors.apply_c2b, "send", redis_down)
    assert confirm(client, c2b_body("RKL51ZDR4F", account_number(account["id"])))[0] == 200
    monkeypatch.undo()
    assert [s.applied_at for s in stored()] == [None]

    found = scheduler.sweep_once(86400, fake_redis, sweeps.Thresholds(
        unapplied_callback_after=dt.timedelta(0)))
    again = scheduler.sweep_once(86400, fake_redis, sweeps.Thresholds(
        unapplied_callback_after=dt.timedelta(0)))
    applied(stub_broker, stub_worker)

    assert (found["unapplied_c2b_confirmations"], again["unapplied_c2b_confirmations"]) == (1, 0)
    assert balance(account["id"]) == 10_000 and stored()[0].outcome == "credited"


def test_topups_show_tells_a_paybill_payments_whole_story(
        client, account, stub_broker, stub_worker, settings, monkeypatch, capsys):
    confirm(client, c2b_body("RKL51ZDR4F", account_number(account["id"])))
    confirm(client, c2b_body("RKL51ZDR4F", account_number(account["id"])))
    applied(stub_broker, stub_worker)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    cli.main(["topups", "show", "rkl51zdr4f", "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert shown["matched_by"] == "mpesa_receipt" and shown["topup"]["channel"] == "c2b"
    kinds = [step["kind"] for step in shown["history"]]
    assert kinds.count("c2b_confirmation") == 2 and kinds.count("credited") == 1
    assert {"paid", "ledger_entry", "duplicate_success"} <= set(kinds)
    reports = [s["detail"] for s in shown["history"] if s["kind"] == "c2b_confirmation"]
    assert sorted(r["outcome"] for r in reports) == ["credited", "duplicate"]
    assert {(r["phone"], r["bill_ref_number"]) for r in reports} == {
        ("2547**** 126", account_number(account["id"]))}
