"""Every failure code Daraja documents fails a top-up with Daraja's code, whether it
comes by callback or by STK Query; "still processing" and undocumented codes never do."""
import json

import pytest

from daraja.answers import StkQueryResult
from ledger import db, inbox, settlement
from ledger.models import FAILED, PENDING, SUCCEEDED
from tests.unit.stk_support import kinds, new_topup, row
from workers import tasks

pytestmark = pytest.mark.both_databases

# every ResultCode Daraja documents as "no money moved"
DOCUMENTED_FAILURES = ["1", "2", "3", "4", "8", "17", "1001", "1019", "1025", "9999", "1031",
                       "1032", "1036", "1037", "2001", "2028", "SFC_IC0003", "8006", "E3008"]
UNDOCUMENTED = ["42", "1033", "5000", "E3009", "SFC_IC0004", "0.0"]


def pushed(stk, account_id, phone="254712345678") -> str:
    """A top-up whose push Daraja (the simulator) accepted."""
    topup_id = new_topup(account_id, phone)
    with db.connection():
        assert tasks.push(topup_id, stk.daraja, query_after_s=60, redis=stk.redis)[0] == "sent"
    return topup_id


def query(stk, topup_id, daraja=None):
    with db.connection():
        return tasks.query(topup_id, daraja or stk.daraja, give_up_after_s=3600, redis=stk.redis)


def callback(checkout_request_id, code, desc="[STK_CB - ]Whatever Daraja says"):
    # numeric codes arrive as JSON numbers in a callback, the others as strings
    value = int(code) if code.isdigit() else code
    body = json.dumps({"Body": {"stkCallback": {
        "MerchantRequestID": "m-1", "CheckoutRequestID": checkout_request_id,
        "ResultCode": value, "ResultDesc": desc}}}).encode()
    with db.connection():
        row_, _ = inbox.store_callback(body, "196.201.214.200")
        return settlement.apply_callback(row_.seq)


class QueryAnswers:
    """A Daraja whose STK Query answers what the test says (for codes no simulator phone has)."""

    def __init__(self, *codes):
        self.codes = list(codes)

    def stk_query(self, checkout_request_id):
        code = self.codes.pop(0)
        return StkQueryResult(result_code=code, result_desc=f"desc {code}", pending=code == "4999",
                              merchant_request_id="m-1", checkout_request_id=checkout_request_id,
                              raw={})


@pytest.mark.parametrize("code", DOCUMENTED_FAILURES)
def test_a_documented_failure_code_in_a_callback_fails_the_topup_with_that_code(
        stk, account_id, code):
    topup_id = pushed(stk, account_id)
    assert callback(row(topup_id).checkout_request_id, code) == "failed"
    topup = row(topup_id)
    assert (topup.status, topup.failure_code) == (FAILED, code)
    assert topup.failure_reason == "[STK_CB - ]Whatever Daraja says"


@pytest.mark.parametrize("code", [c for c in DOCUMENTED_FAILURES if c.isdigit()])
def test_a_documented_failure_code_answered_by_stk_query_fails_the_topup_with_that_code(
        stk, account_id, code):
    # 25470000CCCC: the simulator settles the transaction with ResultCode CCCC
    topup_id = pushed(stk, account_id, phone=f"2547000{int(code):05d}")
    assert query(stk, topup_id) == "failed"
    topup = row(topup_id)
    assert (topup.status, topup.failure_code) == (FAILED, code)
    assert topup.failure_reason and "[" not in topup.failure_reason


@pytest.mark.parametrize("code", ["SFC_IC0003", "E3008"])
def test_an_alphanumeric_failure_code_answered_by_stk_query_fails_the_topup(stk, account_id, code):
    topup_id = pushed(stk, account_id)
    assert query(stk, topup_id, QueryAnswers(code)) == "failed"
    assert (row(topup_id).status, row(topup_id).failure_code) == (FAILED, code)


@pytest.mark.parametrize("code", UNDOCUMENTED)
def test_an_undocumented_code_is_never_a_failure_by_callback_or_by_query(stk, account_id, code):
    topup_id = pushed(stk, account_id)
    assert callback(row(topup_id).checkout_request_id, code) == "unknown_code"
    with pytest.raises(tasks.AskAgainLater):
        query(stk, topup_id, QueryAnswers(code))
    topup = row(topup_id)
    assert (topup.status, topup.failure_code, topup.completed_at) == (PENDING, None, None)
    assert "callback_unknown_code" in kinds(topup_id) and "failed" not in kinds(topup_id)


def test_the_simulators_undocumented_code_42_leaves_the_topup_pending(stk, account_id):
    topup_id = pushed(stk, account_id, phone="254700000042")
    with pytest.raises(tasks.AskAgainLater, match="undocumented ResultCode 42"):
        query(stk, topup_id)
    assert row(topup_id).status == PENDING


@pytest.mark.parametrize("phone", ["254700010010", "254700010011"])
def test_still_processing_in_either_form_is_asked_again_and_the_sixth_answer_settles_it(
        stk, account_id, daraja_sim, phone):
    # five "still processing" answers: ResultCode "4999", or HTTP 500 "being processed"
    topup_id = pushed(stk, account_id, phone=phone)
    for _ in range(5):
        with pytest.raises(tasks.AskAgainLater, match="still processing"):
            query(stk, topup_id)
        assert row(topup_id).status == PENDING
    assert query(stk, topup_id) == "credited"
    topup = row(topup_id)
    assert (topup.status, topup.mpesa_receipt, topup.query_attempts) == (SUCCEEDED, None, 6)


def test_a_success_learnt_by_query_is_never_undone_by_a_later_failure_callback(stk, account_id):
    topup_id = pushed(stk, account_id)
    assert query(stk, topup_id) == "credited"
    assert callback(row(topup_id).checkout_request_id, "1032") == "duplicate"
    assert row(topup_id).status == SUCCEEDED
