"""Reconciliation: the organisation-portal statement held against the ledger, and --apply."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from ledger import accounts, db, pushes, reconcile, settlement, topups
from ledger.models import (
    FAILED, PENDING, SUCCEEDED, UNKNOWN, Event, LedgerEntry, OrphanPayment, Reconciliation, TopUp,
    TopUpEvent, Wallet, utcnow,
)
from ledger.statement import MalformedStatement, parse

pytestmark = pytest.mark.both_databases

EAT = dt.timezone(dt.timedelta(hours=3))
HEADER = ("Receipt No.,Completion Time,Initiation Time,Details,Transaction Status,Paid In,"
          "Withdrawn,Balance,Balance Confirmed,Reason Type,Other Party Info,"
          "Linked Transaction ID,A/C No.")


# --- a small ledger, built through the gateway's own functions ----------------------------------

class Ledger:
    def __init__(self):
        self.account, _ = accounts.create_account("acme")
        self.seq = 0

    def _pushed(self, phone, amount, checkout=True):
        self.seq += 1
        topup, _ = topups.create_topup(self.account.id, amount=amount, phone=phone,
                                       reference=None, metadata={})
        pushes.claim_push(topup.id)
        if checkout:
            pushes.record_push_accepted(topup.id, checkout_request_id=f"ws_CO_{self.seq:04d}",
                                        merchant_request_id="m", query_after_s=60)
        return TopUp.get(TopUp.id == topup.id)

    def paid_by_callback(self, phone, amount, receipt, confirmed=None):
        topup = self._pushed(phone, amount)
        cents = (confirmed if confirmed is not None else amount) * 100
        assert settlement.settle_success(topup.checkout_request_id, amount_cents=cents,
                                         receipt=receipt, phone=phone, source="callback") == "credited"
        return topup

    def paid_by_query(self, phone, amount):
        topup = self._pushed(phone, amount)
        assert settlement.settle_success(topup.checkout_request_id, amount_cents=None, receipt=None,
                                         phone=None, source="query") == "credited"
        return topup

    def unknown(self, phone, amount, checkout=True):
        topup = self._pushed(phone, amount, checkout=checkout)
        if not checkout:
            pushes.record_push_ambiguous(topup.id, "read_timeout")
        assert settlement.give_up(topup.id, 60, now=utcnow() + dt.timedelta(minutes=2)) == UNKNOWN
        return TopUp.get(TopUp.id == topup.id)

    def pending(self, phone, amount):
        return self._pushed(phone, amount)

    def failed(self, phone, amount):
        topup = self._pushed(phone, amount)
        settlement.settle_failure(topup.checkout_request_id, "1032", "Request cancelled by user",
                                  source="callback")
        return topup

    def orphan(self, checkout, receipt, amount, phone):
        assert settlement.settle_success(checkout, amount_cents=amount * 100, receipt=receipt,
                                         phone=phone, source="callback") == "orphan"
        return OrphanPayment.get(OrphanPayment.checkout_request_id == checkout)

    def balance(self):
        return Wallet.get(Wallet.account == self.account.id).balance_cents


@pytest.fixture
def ledger(database):
    with db.connection():
        yield Ledger()


def line(receipt, phone, amount, *, at=None, linked="", withdrawn="", status="Completed"):
    at = (at or utcnow()).replace(tzinfo=dt.timezone.utc).astimezone(EAT)
    stamp = at.strftime("%d-%m-%Y %H:%M:%S")
    paid_in = f'"{amount:,.2f}"' if amount else ""
    return (f"{receipt},{stamp},{stamp},Pay Bill Online,{status},{paid_in},{withdrawn},"
            f'"9,999.00",true,Pay Bill Online,{phone} - CUSTOMER,{linked},REF')


def statement(*lines, name="statement.csv"):
    return parse(("\ufeff" + "\r\n".join([HEADER, *lines]) + "\r\n").encode(), name=name)


def receipts(items):
    return sorted(item["receipt"] for item in items)


# --- matching ------------------------------------------------------------------------------------

def test_a_payment_credited_by_its_callback_is_matched_by_receipt(ledger):
    topup = ledger.paid_by_callback("254712000001", 1000, "QAA0000001")

    report = reconcile.run(statement(line("QAA0000001", "254712000001", 1000)))

    assert [(m["receipt"], m["by"], m["topup"]) for m in report["matched"]] == [
        ("QAA0000001", "receipt", topup.id)]
    assert report["summary"]["matched"] == 1
    assert all(report["summary"][k] == 0 for k in report["summary"] if k != "matched")


def test_a_credit_settled_by_query_without_a_receipt_is_matched_by_phone_amount_and_time(ledger):
    topup = ledger.paid_by_query("254712000002", 250)

    report = reconcile.run(statement(line("QAA0000002", "254712000002", 250)))

    assert [(m["receipt"], m["by"], m["topup"]) for m in report["matched"]] == [
        ("QAA0000002", "phone_amount_time", topup.id)]
    assert report["credited_not_on_statement"] == []


def test_a_masked_phone_on_the_statement_still_matches_a_receiptless_credit(ledger):
    topup = ledger.paid_by_query("254712000029", 250)

    report = reconcile.run(statement(line("QAA0000029", "2547******29", 250)))

    assert [(m["receipt"], m["by"], m["topup"]) for m in report["matched"]] == [
        ("QAA0000029", "phone_amount_time", topup.id)]


def test_a_payment_far_from_the_push_in_time_does_not_match_a_receiptless_credit(ledger):
    ledger.paid_by_query("254712000003", 250)
    much_later = utcnow() + dt.timedelta(hours=2)
    a_bit_earlier = utcnow() - dt.timedelta(seconds=30)

    report = reconcile.run(statement(line("QAA0000003", "254712000003", 250, at=much_later),
                                     line("QZZ0000009", "254799999999", 10, at=a_bit_earlier)),
                           window=dt.timedelta(minutes=10))

    assert report["matched"] == []
    assert receipts(report["paid_not_credited"]) == ["QAA0000003", "QZZ0000009"]
    [missing] = report["credited_not_on_statement"]
    assert missing["receipt"] is None and missing["amount_cents"] == 25_000


def test_a_linked_charge_row_is_neither_a_payment_nor_a_duplicate(ledger):
    ledger.paid_by_callback("254712000004", 1000, "QAA0000004")

    report = reconcile.run(statement(
        line("QAA0000004", "254712000004", 0, linked="QAA0000004", withdrawn="-5.50"),
        line("QAA0000004", "254712000004", 1000)))

    assert report["summary"]["matched"] == 1
    assert report["duplicates"] == {"statement": [], "ledger": []}
    assert [(c["receipt"], c["linked_to"], c["withdrawn_cents"]) for c in report["charges"]] == [
        ("QAA0000004", "QAA0000004", 550)]


def test_amounts_that_differ_are_reported_and_never_changed(ledger):
    topup = ledger.paid_by_callback("254700010012", 1000, "QAA0000005", confirmed=999)

    report = reconcile.run(statement(line("QAA0000005", "254700010012", 1000)), apply_safe=True)

    [differ] = report["amounts_differ"]
    assert (differ["receipt"], differ["topup"], differ["statement_amount_cents"],
            differ["ledger_amount_cents"]) == ("QAA0000005", topup.id, 100_000, 99_900)
    assert report["matched"] == [] and report["applied"] == []
    assert ledger.balance() == 99_900


def test_a_credit_the_statement_does_not_show_is_reported(ledger):
    ledger.paid_by_callback("254712000006", 1000, "QAA0000006")
    forged = ledger.paid_by_callback("254712000007", 500, "QFORGED007")

    report = reconcile.run(statement(line("QAA0000006", "254712000006", 1000)))

    [missing] = report["credited_not_on_statement"]
    assert (missing["receipt"], missing["topup"], missing["amount_cents"]) == (
        "QFORGED007", forged.id, 50_000)


def test_duplicates_are_reported_on_either_side(ledger):
    ledger.paid_by_callback("254712000008", 300, "QAA0000008")
    twice = ledger.paid_by_query("254712000008", 300)   # the same payment credited again

    report = reconcile.run(statement(line("QAA0000008", "254712000008", 300),
                                     line("QAA0000008", "254712000008", 300)))

    assert report["duplicates"]["statement"] == [{"receipt": "QAA0000008", "lines": [2, 3]}]
    [dup] = report["duplicates"]["ledger"]
    assert (dup["topup"], dup["duplicate_of"]) == (twice.id, "QAA0000008")
    assert report["credited_not_on_statement"] == []
    assert report["summary"]["matched"] == 1


# --- paid but not credited, and --apply --------------------------------------------------------

def test_an_unknown_topup_the_statement_proves_paid_is_credited_once_with_apply(ledger):
    topup = ledger.unknown("254712000010", 700)
    paid = statement(line("QAA0000010", "254712000010", 700))

    found = reconcile.run(paid)
    [item] = found["paid_not_credited"]
    assert item["belongs_to"]["topup"]["id"] == topup.id
    assert item["belongs_to"]["topup"]["status"] == UNKNOWN and item["action"] == "apply"
    assert TopUp.get(TopUp.id == topup.id).status == UNKNOWN      # a report changes nothing

    applied = reconcile.run(paid, apply_safe=True)

    assert [(a["topup"], a["outcome"]) for a in applied["applied"]] == [(topup.id, "credited")]
    settled = TopUp.get(TopUp.id == topup.id)
    assert (settled.status, settled.mpesa_receipt) == (SUCCEEDED, "QAA0000010")
    entry = LedgerEntry.get(LedgerEntry.topup == topup.id)
    assert (entry.source, entry.amount_cents, entry.mpesa_receipt) == (
        "statement", 70_000, "QAA0000010")
    assert ledger.balance() == 70_000
    assert "reconciled" in [e.kind for e in TopUpEvent.select().where(
        TopUpEvent.topup == topup.id)]
    assert [e.type for e in Event.select().where(Event.topup == topup.id)] == ["wallet.top_up"]

    again = reconcile.run(paid, apply_safe=True)

    assert again["applied"] == [] and again["paid_not_credited"] == []
    assert [(m["receipt"], m["by"]) for m in again["matched"]] == [("QAA0000010", "receipt")]
    assert ledger.balance() == 70_000 and LedgerEntry.select().count() == 1


def test_an_orphan_payment_is_credited_to_the_unknown_topup_whose_lost_push_claims_it(ledger):
    topup = ledger.unknown("254712000011", 400, checkout=False)   # the push's answer was lost
    # A callback without its PhoneNumber cannot be matched to the lost push when it comes
    # (the gateway matches by phone and amount); the statement's phone can.
    orphan = ledger.orphan("ws_CO_LOST0011", "QAA0000011", 400, None)

    report = reconcile.run(statement(line("QAA0000011", "254712000011", 400)), apply_safe=True)

    [item] = report["paid_not_credited"]
    assert item["belongs_to"]["orphan"]["checkout_request_id"] == "ws_CO_LOST0011"
    assert item["belongs_to"]["topup"]["id"] == topup.id and item["action"] == "credited"
    settled = TopUp.get(TopUp.id == topup.id)
    assert (settled.status, settled.checkout_request_id, settled.mpesa_receipt) == (
        SUCCEEDED, "ws_CO_LOST0011", "QAA0000011")
    assert OrphanPayment.get(OrphanPayment.seq == orphan.seq).resolved_topup_id == topup.id
    assert ledger.balance() == 40_000


def test_an_orphan_no_topup_claims_is_reported_only(ledger):
    ledger.orphan("ws_CO_NOBODY12", "QAA0000012", 900, "254712000012")

    report = reconcile.run(statement(line("QAA0000012", "254712000012", 900)), apply_safe=True)

    [item] = report["paid_not_credited"]
    assert item["belongs_to"] == {"orphan": item["belongs_to"]["orphan"]}
    assert item["action"] == "reported" and "no account" in item["reason"]
    assert report["applied"] == [] and LedgerEntry.select().count() == 0


def test_an_orphan_whose_topup_has_its_checkout_request_id_and_is_unknown_is_credited(ledger):
    topup = ledger.unknown("254712000013", 150)
    # a callback that beat the push's answer, kept as an orphan and never applied again
    OrphanPayment.create(checkout_request_id=topup.checkout_request_id,
                         mpesa_receipt="QAA0000013", amount_cents=15_000, phone="254712000013")

    report = reconcile.run(statement(line("QAA0000013", "254712000013", 150)), apply_safe=True)

    assert [(a["topup"], a["outcome"]) for a in report["applied"]] == [(topup.id, "credited")]
    assert OrphanPayment.get(OrphanPayment.mpesa_receipt == "QAA0000013").resolved_topup_id == \
        topup.id


def test_a_pending_topup_is_reported_and_left_to_its_callback_or_query(ledger):
    topup = ledger.pending("254712000014", 100)

    report = reconcile.run(statement(line("QAA0000014", "254712000014", 100)), apply_safe=True)

    [item] = report["paid_not_credited"]
    assert item["belongs_to"]["topup"]["id"] == topup.id
    assert item["action"] == "reported" and "pending" in item["reason"]
    assert TopUp.get(TopUp.id == topup.id).status == PENDING


def test_a_failed_topup_that_the_statement_shows_paid_is_reported_for_a_person(ledger):
    topup = ledger.failed("254712000015", 100)

    report = reconcile.run(statement(line("QAA0000015", "254712000015", 100)), apply_safe=True)

    [item] = report["paid_not_credited"]
    assert item["belongs_to"]["topup"]["id"] == topup.id and item["action"] == "reported"
    assert TopUp.get(TopUp.id == topup.id).status == FAILED and ledger.balance() == 0


def test_two_unknown_topups_that_fit_one_payment_are_reported_not_guessed(ledger):
    ledger.unknown("254712000016", 100)
    ledger.unknown("254712000016", 100)

    report = reconcile.run(statement(line("QAA0000016", "254712000016", 100)), apply_safe=True)

    [item] = report["paid_not_credited"]
    assert item["action"] == "reported" and "more than one" in item["reason"]
    assert ledger.balance() == 0
    assert len(report["unknown_not_on_statement"]) == 1


def test_two_payments_that_fit_one_unknown_topup_are_reported_not_guessed(ledger):
    topup = ledger.unknown("254712000040", 100)

    report = reconcile.run(statement(line("QAA0000040", "254712000040", 100),
                                     line("QAA0000041", "254712000040", 100)), apply_safe=True)

    assert [(i["receipt"], i["belongs_to"] and i["belongs_to"]["topup"]["id"], i["action"])
            for i in report["paid_not_credited"]] == [
        ("QAA0000040", topup.id, "reported"), ("QAA0000041", None, "reported")]
    assert "more than one" in report["paid_not_credited"][0]["reason"]
    assert report["applied"] == [] and ledger.balance() == 0
    assert TopUp.get(TopUp.id == topup.id).status == UNKNOWN


def test_an_unknown_topup_the_statement_does_not_show_stays_unknown_and_is_reported(ledger):
    ledger.paid_by_callback("254712000017", 100, "QAA0000017")
    unpaid = ledger.unknown("254712000018", 100)

    report = reconcile.run(statement(line("QAA0000017", "254712000017", 100)), apply_safe=True)

    assert [u["id"] for u in report["unknown_not_on_statement"]] == [unpaid.id]
    assert TopUp.get(TopUp.id == unpaid.id).status == UNKNOWN


def test_an_orphan_the_statement_does_not_show_is_reported_as_unproven(ledger):
    ledger.paid_by_callback("254712000019", 100, "QAA0000019")
    ledger.orphan("ws_CO_FORGED20", "QFORGED020", 5000, "254712000020")

    report = reconcile.run(statement(line("QAA0000019", "254712000019", 100)))

    assert [(o["checkout_request_id"], o["receipt"]) for o in report["orphans_not_on_statement"]] \
        == [("ws_CO_FORGED20", "QFORGED020")]


# --- the later steps: amounts that differ, orphans by their top-up, payments nothing fits ------

def test_a_receiptless_credit_of_another_amount_is_matched_by_phone_and_time_as_differing(ledger):
    topup = ledger.paid_by_query("254712000031", 250)

    report = reconcile.run(statement(line("QAA0000031", "254712000031", 300)), apply_safe=True)

    [differ] = report["amounts_differ"]
    assert (differ["receipt"], differ["by"], differ["topup"], differ["statement_amount_cents"],
            differ["ledger_amount_cents"]) == ("QAA0000031", "phone_time", topup.id,
                                               30_000, 25_000)
    assert report["matched"] == [] and report["paid_not_credited"] == []
    assert report["credited_not_on_statement"] == [] and report["applied"] == []


def test_an_unknown_topup_of_another_amount_is_reported_and_never_credited(ledger):
    topup = ledger.unknown("254712000032", 100)

    report = reconcile.run(statement(line("QAA0000032", "254712000032", 120)), apply_safe=True)

    [item] = report["paid_not_credited"]
    assert (item["by"], item["belongs_to"]["topup"]["id"], item["action"]) == (
        "phone_time", topup.id, "reported")
    assert "amounts differ" in item["reason"]
    assert report["unknown_not_on_statement"] == [] and report["applied"] == []
    assert TopUp.get(TopUp.id == topup.id).status == UNKNOWN and ledger.balance() == 0


def test_an_unknown_topup_whose_push_answer_was_lost_and_no_orphan_names_is_left_to_a_person(
        ledger):
    topup = ledger.unknown("254712000033", 100, checkout=False)

    report = reconcile.run(statement(line("QAA0000033", "254712000033", 100)), apply_safe=True)

    [item] = report["paid_not_credited"]
    assert (item["by"], item["belongs_to"]["topup"]["id"], item["action"]) == (
        "phone_amount_time", topup.id, "reported")
    assert "credit it by hand" in item["reason"]
    assert report["applied"] == [] and ledger.balance() == 0


def test_an_orphan_for_a_topup_credited_on_the_querys_word_matches_that_credit(ledger):
    topup = ledger.paid_by_query("254712000034", 200)
    # the callback came after the query had credited the top-up, and was kept as an orphan
    OrphanPayment.create(checkout_request_id=topup.checkout_request_id,
                         mpesa_receipt="QAA0000034", amount_cents=20_000, phone="254712000034")

    report = reconcile.run(statement(line("QAA0000034", "254712000034", 200)), apply_safe=True)

    assert [(m["receipt"], m["by"], m["topup"]) for m in report["matched"]] == [
        ("QAA0000034", "orphan_checkout_request_id", topup.id)]
    assert report["paid_not_credited"] == [] and report["credited_not_on_statement"] == []
    assert report["orphans_not_on_statement"] == [] and report["applied"] == []
    assert ledger.balance() == 20_000


def test_an_orphan_whose_topup_failed_is_reported_for_a_person(ledger):
    topup = ledger.failed("254712000035", 100)
    OrphanPayment.create(checkout_request_id=topup.checkout_request_id,
                         mpesa_receipt="QAA0000035", amount_cents=10_000, phone="254712000035")

    report = reconcile.run(statement(line("QAA0000035", "254712000035", 100)), apply_safe=True)

    [item] = report["paid_not_credited"]
    assert item["belongs_to"]["orphan"]["receipt"] == "QAA0000035"
    assert item["belongs_to"]["topup"]["id"] == topup.id and item["action"] == "reported"
    assert "failed on Daraja's word" in item["reason"]
    assert TopUp.get(TopUp.id == topup.id).status == FAILED and ledger.balance() == 0


def test_an_orphan_two_lost_pushes_could_claim_is_reported_not_guessed(ledger):
    ledger.unknown("254712000036", 100, checkout=False)
    ledger.unknown("254712000036", 100, checkout=False)
    ledger.orphan("ws_CO_LOST0036", "QAA0000036", 100, None)

    report = reconcile.run(statement(line("QAA0000036", "254712000036", 100)), apply_safe=True)

    [item] = report["paid_not_credited"]
    assert "topup" not in item["belongs_to"] and item["action"] == "reported"
    assert "more than one top-up" in item["reason"]
    assert report["applied"] == [] and ledger.balance() == 0
    assert len(report["unknown_not_on_statement"]) == 2


def test_a_receiptless_orphan_is_matched_by_phone_amount_and_time(ledger):
    OrphanPayment.create(checkout_request_id="ws_CO_NORCPT37", mpesa_receipt=None,
                         amount_cents=10_000, phone="254712000037")

    report = reconcile.run(statement(line("QAA0000037", "254712000037", 100)), apply_safe=True)

    [item] = report["paid_not_credited"]
    assert item["belongs_to"]["orphan"]["checkout_request_id"] == "ws_CO_NORCPT37"
    assert item["action"] == "reported" and "no account" in item["reason"]
    assert report["orphans_not_on_statement"] == [] and report["applied"] == []


def test_a_payment_nothing_fits_is_reported_as_belonging_to_nothing(ledger):
    ledger.paid_by_callback("254712000038", 100, "QAA0000038")

    report = reconcile.run(statement(line("QAA0000038", "254712000038", 100),
                                     line("QAA0000039", "254712000039", 100)))

    [item] = report["paid_not_credited"]
    assert (item["receipt"], item["belongs_to"], item["action"]) == (
        "QAA0000039", None, "reported")
    assert receipts(report["matched"]) == ["QAA0000038"]


def test_a_matcher_finds_once(ledger):
    ledger.paid_by_callback("254712000042", 100, "QAA0000042")
    matcher = reconcile.Matcher(statement(line("QAA0000042", "254712000042", 100)))

    assert [m["receipt"] for m in matcher.find().matched] == ["QAA0000042"]
    with pytest.raises(RuntimeError):
        matcher.find()


# --- the period ---------------------------------------------------------------------------------

def test_since_and_until_limit_both_the_statement_and_the_ledger(ledger):
    now = utcnow()
    ledger.paid_by_callback("254712000021", 100, "QAA0000021")
    ledger.paid_by_callback("254712000022", 100, "QNOTONIT22")   # credited now, not on it
    yesterday = now - dt.timedelta(days=1)
    paid = statement(line("QAA0000021", "254712000021", 100),
                     line("QOLD000023", "254712000023", 100, at=yesterday))

    today = reconcile.run(paid, since=now - dt.timedelta(hours=1))
    before = reconcile.run(paid, until=now - dt.timedelta(hours=1))

    assert receipts(today["matched"]) == ["QAA0000021"]
    assert receipts(today["credited_not_on_statement"]) == ["QNOTONIT22"]
    assert today["paid_not_credited"] == [] and today["statement"]["outside_period"] == 1
    assert receipts(before["paid_not_credited"]) == ["QOLD000023"]
    assert before["matched"] == [] and before["credited_not_on_statement"] == []


def test_dates_on_the_command_line_are_nairobi_days():
    assert reconcile.parse_bound("2026-02-03") == dt.datetime(2026, 2, 2, 21, 0)
    assert reconcile.parse_bound("2026-02-03", end=True) == dt.datetime(2026, 2, 3, 21, 0)
    assert reconcile.parse_bound("2026-02-03T10:00") == dt.datetime(2026, 2, 3, 7, 0)
    assert reconcile.parse_bound("2026-02-03T10:00Z") == dt.datetime(2026, 2, 3, 10, 0)
    with pytest.raises(ValueError):
        reconcile.parse_bound("03/02/2026")


# --- the record of runs ------------------------------------------------------------------------

def test_each_run_is_recorded_with_its_statement_findings_and_what_it_applied(ledger):
    ledger.unknown("254712000024", 100)
    paid = statement(line("QAA0000024", "254712000024", 100), name="feb.csv")

    first = reconcile.run(paid)
    second = reconcile.run(paid, apply_safe=True)

    runs = list(Reconciliation.select().order_by(Reconciliation.seq))
    assert [r.id for r in runs] == [first["id"], second["id"]]
    assert all(r.statement_name == "feb.csv" and r.statement_sha256 == paid.sha256 for r in runs)
    assert [(r.apply, r.applied_count) for r in runs] == [(False, 0), (True, 1)]
    assert all(r.finished_at is not None for r in runs)
    assert json.loads(runs[0].summary)["paid_not_credited"] == 1
    assert receipts(json.loads(runs[0].findings)["paid_not_credited"]) == ["QAA0000024"]
    assert [a["receipt"] for a in json.loads(runs[1].applied)] == ["QAA0000024"]


def test_a_malformed_statement_changes_nothing(ledger, tmp_path, monkeypatch, capsys, settings):
    ledger.unknown("254712000025", 100)
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + "\n" + line("QAA0000025", "254712000025", 100) + "\n"
                    + line("QAA0000026", "254712000025", 100).replace('"100.00"', "a lot") + "\n")
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    from topupctl import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["reconcile", str(path), "--apply"])

    assert exited.value.code == 2
    assert "line 3: Paid In 'a lot' is not an amount" in capsys.readouterr().err
    with db.connection():
        assert Reconciliation.select().count() == 0
        assert TopUp.get(TopUp.phone == "254712000025").status == UNKNOWN
        assert LedgerEntry.select().count() == 0
    with pytest.raises(MalformedStatement):
        reconcile.read_file(str(path))


def test_topupctl_reconcile_prints_the_report_as_json_and_as_text(
        ledger, tmp_path, monkeypatch, capsys, settings):
    topup = ledger.unknown("254712000027", 100)
    path = tmp_path / "statement.csv"
    path.write_text(HEADER + "\n" + line("QAA0000027", "254712000027", 100) + "\n")
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    from topupctl import cli

    cli.main(["reconcile", str(path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["statement"]["name"] == "statement.csv"
    assert [i["belongs_to"]["topup"]["id"] for i in report["paid_not_credited"]] == [topup.id]

    cli.main(["reconcile", str(path), "--apply"])
    text = capsys.readouterr().out
    assert "applied: 1 credited from the statement" in text
    assert "QAA0000027" in text

    cli.main(["reconcile", str(path)])
    assert "matched 1, paid not credited 0" in capsys.readouterr().out


# --- GET /ops/reconciliations ------------------------------------------------------------------

@pytest.fixture
def ops_client(settings, database, stub_broker):
    import dataclasses
    from app import create_app
    from tests.unit.conftest import FakeRedis
    app = create_app({"SETTINGS": dataclasses.replace(settings, ops_token="s3cret-ops"),
                      "BROKER": stub_broker, "REDIS": FakeRedis(), "BIND_DATABASE": False,
                      "TESTING": True})
    return app.test_client()


OPS = {"Authorization": "Bearer s3cret-ops"}


def test_ops_lists_reconciliation_runs_newest_first_behind_the_ops_token(ledger, ops_client):
    ledger.unknown("254712000030", 100)
    paid = statement(line("QAA0000030", "254712000030", 100), name="march.csv")
    first = reconcile.run(paid)
    second = reconcile.run(paid, apply_safe=True)

    assert ops_client.get("/ops/reconciliations").status_code == 401
    assert ops_client.get("/ops/reconciliations", headers={
        "Authorization": "Bearer wrong"}).status_code == 401
    listed = ops_client.get("/ops/reconciliations", headers=OPS).get_json()

    assert [r["id"] for r in listed["data"]] == [second["id"], first["id"]]
    newest = listed["data"][0]
    assert newest["statement"] == {"name": "march.csv", "sha256": paid.sha256}
    assert (newest["apply"], newest["applied_count"]) == (True, 1)
    assert newest["summary"]["paid_not_credited"] == 1 and newest["finished_at"]
    assert listed["has_more"] is False
    page = ops_client.get("/ops/reconciliations?limit=1", headers=OPS).get_json()
    assert [r["id"] for r in page["data"]] == [second["id"]] and page["has_more"] is True
    rest = ops_client.get(f"/ops/reconciliations?limit=1&starting_after={second['id']}",
                          headers=OPS).get_json()
    assert [r["id"] for r in rest["data"]] == [first["id"]]
    one = ops_client.get(f"/ops/reconciliations/{second['id']}", headers=OPS).get_json()
    assert [a["receipt"] for a in one["applied"]] == ["QAA0000030"]
    assert [i["receipt"] for i in one["findings"]["paid_not_credited"]] == ["QAA0000030"]
    for limit in ("0", "101", "\u00b2", "1e1"):   # "²" is a digit to str.isdigit, not to int
        answer = ops_client.get(f"/ops/reconciliations?limit={limit}", headers=OPS)
        assert answer.status_code == 422 and "limit" in answer.get_data(as_text=True)
    assert ops_client.get("/ops/reconciliations/rc_nope", headers=OPS).status_code == 404


def test_ops_reconciliations_are_off_without_an_ops_token(ledger, client):
    assert client.get("/ops/reconciliations",
                      headers={"Authorization": "Bearer anything"}).status_code == 404
