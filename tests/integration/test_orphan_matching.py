"""A push whose answer was lost never learns its CheckoutRequestID, so its callback arrives
as an orphan payment. The payment credits that top-up only when nothing else can be meant
(the rule in ledger/orphans.py and docs/design.md); anything less certain stays an
orphan for reconciliation against the statement. Each branch of the rule, on SQLite and on
PostgreSQL."""
from __future__ import annotations

import datetime as dt
import threading

import peewee
import pytest

from daraja.answers import StkPushAccepted
from ledger import accounts, db, inbox, orphans, pushes, settlement, topups
from ledger.models import (
    PENDING, PUSH_AMBIGUOUS, PUSH_SENDING, SUCCEEDED, UNKNOWN, Callback, LedgerEntry,
    OrphanPayment, TopUp, TopUpEvent, Wallet, utcnow,
)
from tests.unit.test_crediting import success_body
from tests.waiting import wait_until
from workers import scheduler, sweeps, tasks

pytestmark = pytest.mark.both_databases

PHONE = "254712345678"


@pytest.fixture
def other_account(ledger):
    account, _ = accounts.create_account("globex")
    return account


def in_flight(account, amount=250, phone=PHONE):
    """A top-up whose push is claimed: on its way to Daraja, no answer yet."""
    topup, _ = topups.create_topup(account.id, amount=amount, phone=phone, reference=None,
                                   metadata={})
    assert pushes.claim_push(topup.id) is not None
    return topup


def lost_push(account, amount=250, phone=PHONE):
    """A top-up whose push went out and whose answer never came back."""
    topup = in_flight(account, amount, phone)
    pushes.record_push_ambiguous(topup.id, reason="ReadTimeout")
    return topup


def pay(checkout_request_id, amount, receipt, phone=PHONE):
    return settlement.settle_success(checkout_request_id, amount_cents=amount * 100,
                                     receipt=receipt, phone=phone, source="callback")


def callback(checkout_request_id, amount, receipt, phone=PHONE) -> int:
    row, _ = inbox.store_callback(
        success_body(checkout_request_id, amount=amount, receipt=receipt, phone=int(phone)),
        "127.0.0.1")
    return row.seq


def balance(account):
    return Wallet.get(Wallet.account == account.id).balance_cents


def state(topup):
    row = TopUp.get(TopUp.id == topup.id)
    return row.status, row.checkout_request_id, row.mpesa_receipt


def kinds(topup):
    return [e.kind for e in TopUpEvent.select().where(TopUpEvent.topup == topup.id)]


class AcceptingDaraja:
    """Accepts every push with the next CheckoutRequestID; ``during_push`` runs while the
    push is on its way (a callback that beats the answer)."""

    def __init__(self, checkout_request_id, during_push=None):
        self.checkout_request_id = checkout_request_id
        self.during_push = during_push

    def stk_push(self, **_):
        if self.during_push:
            self.during_push()
        return StkPushAccepted(merchant_request_id="m", checkout_request_id=self.checkout_request_id,
                               response_code="0", response_description="Success",
                               customer_message=None, raw={})


# --- the lost push and its payment ------------------------------------------------------------

def test_the_callback_of_a_lost_push_credits_its_topup_once(ledger):
    topup = lost_push(ledger, 250)

    assert pay("ws_CO_LOST1", 250, "QLS0000001") == "credited"
    assert pay("ws_CO_LOST1", 250, "QLS0000001") == "duplicate"   # the callback again

    assert state(topup) == (SUCCEEDED, "ws_CO_LOST1", "QLS0000001")
    assert "matched by phone and amount" in TopUp.get(TopUp.id == topup.id).flagged
    assert balance(ledger) == 25_000 and LedgerEntry.select().count() == 1
    assert OrphanPayment.select().count() == 0


def test_a_payment_that_came_while_the_push_was_out_is_matched_when_the_push_turns_ambiguous(
        ledger):
    topup = in_flight(ledger, 250)
    # the callback beats the push's timed-out answer: nobody knows its CheckoutRequestID yet
    assert pay("ws_CO_EARLY", 250, "QLS0000002") == "orphan"
    assert TopUp.get(TopUp.id == topup.id).status == PENDING

    pushes.record_push_ambiguous(topup.id, reason="ReadTimeout")

    assert state(topup) == (SUCCEEDED, "ws_CO_EARLY", "QLS0000002")
    assert OrphanPayment.get(OrphanPayment.checkout_request_id == "ws_CO_EARLY") \
        .resolved_topup_id == topup.id
    assert balance(ledger) == 25_000


def test_an_unknown_topup_is_still_matched_by_its_late_payment(ledger):
    topup = lost_push(ledger, 250)
    assert settlement.give_up(topup.id, 60, now=topup.created_at + dt.timedelta(minutes=5)) == UNKNOWN

    assert pay("ws_CO_LATE", 250, "QLS0000003") == "credited"
    assert TopUp.get(TopUp.id == topup.id).status == SUCCEEDED


# --- rule 2: every push that may have reached Daraja is a candidate, whatever its account -----

def test_a_payment_while_another_accounts_push_to_the_phone_is_out_goes_to_neither(
        ledger, other_account):
    lost = lost_push(ledger, 100)                 # account X: its answer was an HTML page
    out = in_flight(other_account, 100)           # account Y, two minutes later: on its way

    assert pay("ws_CO_B", 100, "QLS0000010") == "orphan"

    assert state(lost) == (PENDING, None, None)
    assert balance(ledger) == 0 and balance(other_account) == 0
    assert TopUp.get(TopUp.id == out.id).status == PENDING


def test_the_payment_of_a_push_in_flight_credits_that_push_when_its_answer_comes(
        ledger, other_account):
    lost = lost_push(ledger, 100)
    out = in_flight(other_account, 100)
    seq = callback("ws_CO_B", 100, "QLS0000011")
    assert settlement.apply_callback(seq) == "orphan"    # the callback beat the push's answer

    early = pushes.record_push_accepted(out.id, checkout_request_id="ws_CO_B",
                                        merchant_request_id="m", query_after_s=60)
    assert early == [seq]
    assert settlement.apply_callback(seq) == "credited"

    assert state(out) == (SUCCEEDED, "ws_CO_B", "QLS0000011")
    assert balance(other_account) == 10_000 and balance(ledger) == 0
    assert state(lost) == (PENDING, None, None)


def test_two_lost_pushes_that_fit_one_payment_leave_it_to_the_statement(ledger):
    first, second = lost_push(ledger, 250), lost_push(ledger, 250)

    assert pay("ws_CO_TWOFIT", 250, "QLS0000005") == "orphan"

    assert {state(t)[1] for t in (first, second)} == {None}
    assert balance(ledger) == 0


def test_a_lost_push_of_another_amount_still_counts_as_a_candidate(ledger, other_account):
    lost_push(ledger, 250)
    lost_push(other_account, 300)

    assert pay("ws_CO_AMBIG", 250, "QLS0000012") == "orphan"
    assert balance(ledger) == 0


def test_a_push_started_after_the_payment_arrived_is_not_its_push(ledger):
    assert pay("ws_CO_BEFORE", 250, "QLS0000013") == "orphan"
    OrphanPayment.update(created_at=utcnow() - dt.timedelta(minutes=10)).execute()

    topup = lost_push(ledger, 250)

    assert state(topup) == (PENDING, None, None)
    assert OrphanPayment.get(OrphanPayment.checkout_request_id == "ws_CO_BEFORE") \
        .resolved_topup_id is None


def test_a_push_older_than_the_window_is_not_a_candidate(ledger):
    topup = lost_push(ledger, 250)
    TopUp.update(push_started_at=utcnow() - orphans.MATCH_WINDOW
                 - dt.timedelta(minutes=1)).execute()

    assert pay("ws_CO_OLD", 250, "QLS0000014") == "orphan"
    assert state(topup) == (PENDING, None, None)


# --- rule 3: the one candidate is ambiguous and asked for that amount ---------------------------

@pytest.mark.parametrize("amount, phone", [(300, PHONE), (250, "254712999999")])
def test_a_payment_of_another_amount_or_phone_stays_an_orphan(ledger, amount, phone):
    topup = lost_push(ledger, 250)

    assert pay("ws_CO_OTHER", amount, "QLS0000004", phone=phone) == "orphan"

    assert TopUp.get(TopUp.id == topup.id).checkout_request_id is None
    assert balance(ledger) == 0


def test_a_push_still_in_flight_is_never_matched_by_phone_and_amount(ledger):
    topup = in_flight(ledger, 250)

    assert pay("ws_CO_INFLIGHT", 250, "QLS0000015") == "orphan"
    assert state(topup) == (PENDING, None, None)


# --- rule 4: one payment for one push ------------------------------------------------------------

def test_two_payments_that_fit_one_lost_push_leave_it_to_the_statement(ledger):
    topup = in_flight(ledger, 250)
    assert pay("ws_CO_PAIDA", 250, "QLS0000006") == "orphan"
    assert pay("ws_CO_PAIDB", 250, "QLS0000007") == "orphan"

    pushes.record_push_ambiguous(topup.id, reason="ReadTimeout")
    assert TopUp.get(TopUp.id == topup.id).status == PENDING
    assert balance(ledger) == 0


def test_a_second_payment_for_an_already_matched_push_stays_an_orphan(ledger):
    lost_push(ledger, 250)
    assert pay("ws_CO_FIRST", 250, "QLS0000008") == "credited"

    assert pay("ws_CO_SECOND", 250, "QLS0000009") == "orphan"
    assert balance(ledger) == 25_000


# --- rule 1: a callback waits for the answer of a push in flight to its phone ------------------

def test_a_callback_waits_while_a_push_to_its_phone_is_in_flight(ledger, other_account):
    lost_push(ledger, 100)
    in_flight(other_account, 100)
    seq = callback("ws_CO_WAIT", 100, "QLS0000016")

    with pytest.raises(tasks.AskAgainLater):
        tasks.apply_callback(seq)
    assert Callback.get(Callback.seq == seq).applied_at is None
    assert OrphanPayment.select().count() == 0


def test_a_callback_waits_no_longer_than_its_bound_and_is_kept_as_an_orphan(ledger):
    in_flight(ledger, 100)
    seq = callback("ws_CO_WAITED", 100, "QLS0000017")
    Callback.update(received_at=utcnow() - tasks.PUSH_ANSWER_WAIT - dt.timedelta(seconds=1)) \
        .execute()

    assert tasks.apply_callback(seq) == "orphan"


def test_once_the_push_in_flight_is_answered_the_waiting_payment_finds_the_lost_push(
        ledger, other_account):
    lost = lost_push(ledger, 100)
    out = in_flight(other_account, 100)
    TopUp.update(push_state="queued").where(TopUp.id == out.id).execute()   # to be claimed
    seq = callback("ws_CO_LOSTS", 100, "QLS0000018")
    waited = []

    def callback_arrives():
        with pytest.raises(tasks.AskAgainLater):
            tasks.apply_callback(seq)
        waited.append(seq)

    daraja = AcceptingDaraja("ws_CO_OWN", during_push=callback_arrives)
    assert tasks.push(out.id, daraja, query_after_s=60) == ("sent", [])
    assert waited == [seq]

    assert state(out)[1] == "ws_CO_OWN"                  # its answer: another payment's
    assert tasks.apply_callback(seq) == "credited"       # the callback's retry
    assert state(lost) == (SUCCEEDED, "ws_CO_LOSTS", "QLS0000018")
    assert balance(ledger) == 10_000 and balance(other_account) == 0


def test_a_payment_kept_while_a_push_was_out_is_matched_when_that_push_is_answered(
        ledger, other_account):
    lost = lost_push(ledger, 100)
    out = in_flight(other_account, 100)
    assert pay("ws_CO_KEPT", 100, "QLS0000019") == "orphan"   # the wait ran out
    TopUp.update(push_state="queued").where(TopUp.id == out.id).execute()

    assert tasks.push(out.id, AcceptingDaraja("ws_CO_OUT"), query_after_s=60)[0] == "sent"

    assert state(lost) == (SUCCEEDED, "ws_CO_KEPT", "QLS0000019")
    assert balance(ledger) == 10_000


# --- the push's answer comes after all ----------------------------------------------------------

def test_a_push_answer_whose_checkout_request_is_held_elsewhere_flags_both_and_raises_nothing(
        ledger, other_account):
    lost = lost_push(ledger, 100)
    assert pay("ws_CO_HELD", 100, "QLS0000020") == "credited"   # matched to the lost push
    late = in_flight(other_account, 100)
    TopUp.update(push_started_at=utcnow()).where(TopUp.id == late.id).execute()

    assert pushes.record_push_accepted(late.id, checkout_request_id="ws_CO_HELD",
                                       merchant_request_id="m", query_after_s=60) == []

    late_row, lost_row = TopUp.get(TopUp.id == late.id), TopUp.get(TopUp.id == lost.id)
    assert late_row.status == PENDING and late_row.push_state != PUSH_SENDING
    assert late_row.next_query_at is None and "ws_CO_HELD" in late_row.flagged
    assert late.id in lost_row.flagged and lost_row.status == SUCCEEDED
    assert "push_answer_conflict" in kinds(late) and "push_answer_conflict" in kinds(lost)
    assert balance(ledger) == 10_000 and balance(other_account) == 0


def test_a_late_answer_of_a_push_matched_to_its_own_payment_is_no_conflict(ledger):
    topup = lost_push(ledger, 100)
    assert pay("ws_CO_SELF", 100, "QLS0000021") == "credited"

    pushes.record_push_accepted(topup.id, checkout_request_id="ws_CO_SELF",
                                merchant_request_id="m", query_after_s=60)

    assert "push_answer_conflict" not in kinds(topup)
    assert state(topup) == (SUCCEEDED, "ws_CO_SELF", "QLS0000021")


# --- the matching is tried again until it has been --------------------------------------------

def test_a_payment_is_matched_by_its_arrival_not_by_when_it_was_kept(ledger, other_account):
    seq = callback("ws_CO_OLDPAY", 100, "QLS0000200")
    Callback.update(received_at=utcnow() - dt.timedelta(minutes=20)).execute()
    assert tasks.apply_callback(seq) == "orphan"      # applied late, after a backlog

    later = lost_push(other_account, 100)              # pushed 20 minutes after the payment

    assert state(later) == (PENDING, None, None)
    assert balance(other_account) == 0


def test_the_matching_that_failed_half_way_is_tried_again_by_the_outcomes_retry(
        ledger, monkeypatch):
    topup = in_flight(ledger, 250)
    assert pay("ws_CO_X", 250, "QLS0000099") == "orphan"
    retry, calls = settlement.retry_orphans, []

    def blinks_once(phone):
        calls.append(phone)
        if len(calls) == 1:
            raise peewee.OperationalError("server closed the connection unexpectedly")
        return retry(phone)
    monkeypatch.setattr(settlement, "retry_orphans", blinks_once)
    outcome = {"kind": "ambiguous", "reason": "ReadTimeout"}
    with pytest.raises(peewee.OperationalError):
        tasks.record_push_outcome(topup.id, outcome)

    tasks.record_push_outcome(topup.id, outcome)       # the message's retry
    assert state(topup) == (SUCCEEDED, "ws_CO_X", "QLS0000099")


def test_the_scheduler_tries_the_matching_again_for_a_phone_with_both(ledger):
    topup = in_flight(ledger, 250)
    assert pay("ws_CO_SWEPT", 250, "QLS0000098") == "orphan"
    # the push turned ambiguous, and whatever tried the matching then was lost
    TopUp.update(push_state=PUSH_AMBIGUOUS).where(TopUp.id == topup.id).execute()

    assert sweeps.phones_with_orphans_to_match() == [PHONE]
    scheduler.sweep_once(86_400)
    assert state(topup) == (SUCCEEDED, "ws_CO_SWEPT", "QLS0000098")
    assert sweeps.phones_with_orphans_to_match() == []


def test_a_push_refused_while_the_sweep_took_it_for_abandoned_is_still_failed(ledger):
    topup, _ = topups.create_topup(ledger.id, amount=250, phone=PHONE, reference=None,
                                   metadata={})
    claimed_at = utcnow() - dt.timedelta(hours=1)
    pushes.claim_push(topup.id, now=claimed_at)
    # Daraja refused it; the database was down longer than the abandoned-push sweep's wait
    assert sweeps.abandoned_pushes() == [topup.id]

    tasks.record_push_outcome(topup.id, {"kind": "refused", "error_code": "400.002.02",
                                         "error_message": "Bad Request - Invalid PhoneNumber",
                                         "claimed_at": claimed_at.isoformat()})
    row = TopUp.get(TopUp.id == topup.id)
    assert (row.status, row.failure_code) == ("failed", "400.002.02")


def test_a_payment_kept_while_its_push_turns_ambiguous_is_not_stranded(ledger, monkeypatch):
    if db.is_sqlite():
        pytest.skip("SQLite runs one write transaction at a time: no interleaving to test")
    topup = in_flight(ledger, 250)
    deciding, go, paid = threading.Event(), threading.Event(), {}
    lost_push_for = orphans.lost_push_for

    def decided_while_the_push_is_out(*args, **kwargs):
        found = lost_push_for(*args, **kwargs)   # the push is still `sending`: no match
        deciding.set()
        go.wait(10)
        return found
    monkeypatch.setattr(orphans, "lost_push_for", decided_while_the_push_is_out)

    def the_callback():
        with db.connection():
            paid["outcome"] = pay("ws_CO_S1", 250, "QLS0000103")
    payment = threading.Thread(target=the_callback)
    payment.start()
    assert deciding.wait(10)
    monkeypatch.setattr(orphans, "lost_push_for", lost_push_for)

    def the_push_turns_ambiguous():
        with db.connection():
            pushes.record_push_ambiguous(topup.id, reason="ReadTimeout")
    push = threading.Thread(target=the_push_turns_ambiguous)
    push.start()
    wait_until(lambda: db.database.execute_sql(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    ).fetchone()[0] == 1, message="the retry to wait for the payment's transaction")
    go.set()
    payment.join(10)
    push.join(10)

    assert paid["outcome"] == "orphan"
    assert state(topup) == (SUCCEEDED, "ws_CO_S1", "QLS0000103")
