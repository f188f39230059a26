"""The soak's invariants hold on a run that went right, and each one fails on a crafted
violation of it (and says which top-up)."""
import dataclasses

import pytest

from soak.invariants import (
    balances_equal_entries, check_all, everything_settled, forgeries_changed_nothing,
    no_failure_without_darajas_word, nobody_prompted_twice, payments_credited_once,
    receipts_unique, requests_recorded_once,
)
from soak.observed import (
    EntryRow, Forgery, Observed, SimRefusal, SimTransaction, Submission, TopUpRow,
)
from soak.plan import make_plan

PLAN = make_plan(2024, 60, faults=0)
ACCOUNT_IDS = [f"acct_{i}" for i in range(PLAN.accounts)]


def healthy() -> Observed:
    """What a run that went right leaves: every planned top-up settled as Daraja said."""
    observed = Observed()
    for planned in PLAN.topups:
        topup_id, account = f"tu_{planned.index}", ACCOUNT_IDS[planned.account]
        checkout = f"ws_CO_{planned.index:08d}"
        observed.submissions.append(Submission(planned.reference, topup_id))
        if planned.outcome == "refused":
            code = planned.refusal.split(":")[0]
            observed.refusals.append(SimRefusal(planned.reference, code, "script"))
            observed.topups.append(TopUpRow(topup_id, account, planned.reference, "failed",
                                            planned.amount, code, None, None, "refused", 1.0))
            continue
        paid = planned.outcome == "paid"
        receipt = f"R{planned.index:09d}" if paid else None
        observed.transactions.append(SimTransaction(
            checkout, planned.reference, planned.amount, planned.result_code, receipt, 1, 1, 0))
        observed.topups.append(TopUpRow(
            topup_id, account, planned.reference, "succeeded" if paid else "failed",
            planned.amount, None if paid else str(planned.result_code), receipt, checkout,
            "sent", 2.5))
        if paid:
            observed.entries.append(EntryRow(f"le_{planned.index}", account, topup_id,
                                             planned.amount * 100, receipt))
        if planned.forgery:
            observed.forgeries.append(Forgery(planned.reference, planned.forgery, checkout,
                                              planned.forged_receipt, 404))
    observed.balances = {account: sum(e.amount_cents for e in observed.entries
                                      if e.account == account) for account in ACCOUNT_IDS}
    return observed


def first(outcome: str):
    return next(t for t in PLAN.topups if t.outcome == outcome)


def replace_topup(observed: Observed, reference: str, **changes) -> None:
    observed.topups = [dataclasses.replace(t, **changes) if t.reference == reference else t
                       for t in observed.topups]


def failing(verdict) -> str:
    assert not verdict.passed, verdict
    return " | ".join(verdict.violations)


def test_the_plan_used_here_has_every_outcome_and_a_forgery():
    assert {t.outcome for t in PLAN.topups} == {"paid", "failed", "refused"}
    assert any(t.forgery for t in PLAN.topups)


def test_a_run_that_went_right_keeps_every_invariant():
    verdicts = check_all(PLAN, healthy(), ACCOUNT_IDS)
    assert len(verdicts) == 8
    assert [v.violations for v in verdicts] == [()] * 8
    assert all(v.checked > 0 and v.detail for v in verdicts)


def test_a_payment_credited_twice_breaks_exactly_once():
    observed, paid = healthy(), first("paid")
    entry = next(e for e in observed.entries if e.topup == f"tu_{paid.index}")
    observed.entries.append(dataclasses.replace(entry, id="le_again", receipt=None))
    assert "credited 2 times" in failing(payments_credited_once(PLAN, observed, ACCOUNT_IDS))


def test_a_payment_credited_to_another_account_breaks_exactly_once():
    observed, paid = healthy(), first("paid")
    other = ACCOUNT_IDS[(paid.account + 1) % len(ACCOUNT_IDS)]
    observed.entries = [dataclasses.replace(e, account=other) if e.topup == f"tu_{paid.index}"
                        else e for e in observed.entries]
    assert f"credited to {other}" in failing(
        payments_credited_once(PLAN, observed, ACCOUNT_IDS))


def test_a_payment_credited_for_another_amount_breaks_exactly_once():
    observed, paid = healthy(), first("paid")
    observed.entries = [dataclasses.replace(e, amount_cents=e.amount_cents - 1)
                        if e.topup == f"tu_{paid.index}" else e for e in observed.entries]
    assert paid.reference in failing(payments_credited_once(PLAN, observed, ACCOUNT_IDS))


def test_a_payment_left_pending_or_failed_breaks_exactly_once():
    observed, paid = healthy(), first("paid")
    observed.entries = [e for e in observed.entries if e.topup != f"tu_{paid.index}"]
    replace_topup(observed, paid.reference, status="failed", failure_code="1032", receipt=None)
    assert "but the top-up is failed" in failing(
        payments_credited_once(PLAN, observed, ACCOUNT_IDS))


def test_a_credit_for_a_prompt_daraja_failed_breaks_exactly_once():
    observed, failed = healthy(), first("failed")
    replace_topup(observed, failed.reference, status="succeeded", failure_code=None)
    observed.entries.append(EntryRow("le_free", ACCOUNT_IDS[failed.account],
                                     f"tu_{failed.index}", failed.amount * 100, None))
    verdict = failing(payments_credited_once(PLAN, observed, ACCOUNT_IDS))
    assert "never confirmed paid" in verdict and "succeeded, but Daraja confirmed no" in verdict


def test_a_payment_whose_answer_and_callback_were_lost_may_stay_unknown_and_is_counted():
    observed, paid = healthy(), first("paid")
    observed.entries = [e for e in observed.entries if e.topup != f"tu_{paid.index}"]
    replace_topup(observed, paid.reference, status="unknown", receipt=None,
                  checkout_request_id=None, push_state="ambiguous")
    observed.transactions = [dataclasses.replace(t, callbacks_delivered=0, callback_failures=1)
                             if t.reference == paid.reference else t
                             for t in observed.transactions]
    observed.balances = {a: sum(e.amount_cents for e in observed.entries if e.account == a)
                         for a in ACCOUNT_IDS}
    verdicts = check_all(PLAN, observed, ACCOUNT_IDS)
    assert all(v.passed for v in verdicts), [v.violations for v in verdicts]
    assert "1 left open: push answer and callback both lost" in verdicts[0].detail
    # the same before the give-up deadline: pending, its push ambiguous
    replace_topup(observed, paid.reference, status="pending")
    verdicts = check_all(PLAN, observed, ACCOUNT_IDS)
    assert all(v.passed for v in verdicts), [v.violations for v in verdicts]
    assert "1 left open where Daraja's word never reached" in verdicts[6].detail
    # but a paid callback that did arrive must have been matched to it
    observed.transactions = [dataclasses.replace(t, callbacks_delivered=1)
                             if t.reference == paid.reference else t
                             for t in observed.transactions]
    assert f"{paid.reference}: still pending" in failing(everything_settled(PLAN, observed))


def test_an_unknown_top_up_whose_checkout_request_id_was_known_is_not_settled():
    observed, paid = healthy(), first("paid")
    observed.entries = [e for e in observed.entries if e.topup != f"tu_{paid.index}"]
    replace_topup(observed, paid.reference, status="unknown", receipt=None)
    assert "CheckoutRequestID was known" in failing(everything_settled(PLAN, observed))
    assert paid.reference in failing(payments_credited_once(PLAN, observed, ACCOUNT_IDS))


def test_a_pending_top_up_is_not_settled():
    observed, failed = healthy(), first("failed")
    replace_topup(observed, failed.reference, status="pending", failure_code=None)
    assert f"{failed.reference}: still pending" in failing(everything_settled(PLAN, observed))


def test_a_balance_a_cent_off_its_entries_breaks_the_sums():
    observed = healthy()
    account = next(e.account for e in observed.entries)
    observed.balances[account] += 1
    assert account in failing(balances_equal_entries(observed))


def test_a_receipt_twice_or_not_darajas_breaks_receipts_unique():
    observed = healthy()
    one, two = observed.entries[:2]
    observed.entries[1] = dataclasses.replace(two, receipt=one.receipt)
    assert f"receipt {one.receipt} on 2 ledger entries" in failing(
        receipts_unique(PLAN, observed))
    observed = healthy()
    paid = first("paid")
    replace_topup(observed, paid.reference, receipt="QWERTY1234")
    assert "is not Daraja's receipt" in failing(receipts_unique(PLAN, observed))


@pytest.mark.parametrize("code,complaint", [("1", "Daraja said"), ("500.003.02", "Daraja said"),
                                            ("not_sent", "Daraja said")])
def test_a_failure_daraja_never_gave_breaks_no_failure_without_its_word(code, complaint):
    observed, failed = healthy(), first("failed")
    if str(failed.result_code) == code:
        pytest.skip("the plan drew this very code")
    replace_topup(observed, failed.reference, failure_code=code)
    assert complaint in failing(no_failure_without_darajas_word(PLAN, observed))


def test_a_top_up_never_sent_may_fail_not_sent_and_a_paid_one_may_not_fail():
    observed, failed = healthy(), first("failed")
    replace_topup(observed, failed.reference, failure_code="not_sent", checkout_request_id=None)
    observed.transactions = [t for t in observed.transactions
                             if t.reference != failed.reference]
    assert no_failure_without_darajas_word(PLAN, observed).passed
    observed, paid = healthy(), first("paid")
    replace_topup(observed, paid.reference, status="failed", failure_code="0")
    assert "and was paid" in failing(no_failure_without_darajas_word(PLAN, observed))


def test_a_second_prompt_for_one_top_up_breaks_nobody_prompted_twice():
    observed, paid = healthy(), first("paid")
    again = next(t for t in observed.transactions if t.reference == paid.reference)
    observed.transactions.append(dataclasses.replace(again, checkout_request_id="ws_CO_2nd"))
    assert f"{paid.reference}: prompted 2 times" in failing(nobody_prompted_twice(PLAN, observed))


def test_a_request_refused_or_recorded_twice_breaks_recorded_once():
    observed, paid = healthy(), first("paid")
    observed.submissions = [dataclasses.replace(s, topup_id=None, error="AssertionError: 500")
                            if s.reference == paid.reference else s
                            for s in observed.submissions]
    assert "not accepted: AssertionError: 500" in failing(requests_recorded_once(PLAN, observed))
    observed = healthy()
    twin = next(t for t in observed.topups if t.reference == paid.reference)
    observed.topups.append(dataclasses.replace(twin, id="tu_twin", status="pending"))
    assert "recorded as" in failing(requests_recorded_once(PLAN, observed))


def test_a_forgery_let_in_breaks_forgeries_changed_nothing():
    observed = healthy()
    observed.forgeries[0] = dataclasses.replace(observed.forgeries[0], status=200)
    assert "answered 200, not 404" in failing(forgeries_changed_nothing(PLAN, observed))
    observed = healthy()
    observed.forged_found = ["callback 17"]
    assert "a forged receipt is in callback 17" in failing(
        forgeries_changed_nothing(PLAN, observed))
