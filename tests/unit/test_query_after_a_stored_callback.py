"""A query that comes due while the top-up's callback waits in the callbacks queue does not
ask Daraja: the callback settles the top-up."""
import pytest

from ledger import db, inbox
from ledger.models import SUCCEEDED
from tests.unit.stk_support import new_topup, row, sim, success_callback
from workers import tasks

pytestmark = pytest.mark.both_databases


def pushed(stk, account_id, phone="254712345678"):
    topup_id = new_topup(account_id, phone)
    with db.connection():
        assert tasks.push(topup_id, stk.daraja, query_after_s=60, redis=stk.redis)[0] == "sent"
    return topup_id


def queries_received(daraja_sim):
    return sim(daraja_sim, "GET", "/__sim/stats")["stkquery"]


def test_a_query_waits_while_the_callback_is_stored_but_not_yet_applied(
        stk, account_id, daraja_sim):
    topup_id = pushed(stk, account_id)
    with db.connection():
        stored, _ = inbox.store_callback(success_callback(row(topup_id).checkout_request_id),
                                         "196.201.214.200")
        with pytest.raises(tasks.AskAgainLater):
            tasks.query(topup_id, stk.daraja, give_up_after_s=3600, redis=stk.redis)
    assert queries_received(daraja_sim) == 0

    with db.connection():
        assert tasks.apply_callback(stored.seq) == "credited"
        assert tasks.query(topup_id, stk.daraja, give_up_after_s=3600,
                           redis=stk.redis) == "nothing_to_ask"
    assert queries_received(daraja_sim) == 0 and row(topup_id).status == SUCCEEDED


def test_a_query_asks_daraja_when_no_usable_callback_is_stored(stk, account_id, daraja_sim):
    topup_id = pushed(stk, account_id)
    with db.connection():
        inbox.store_callback(b'{"Body": {}}', "196.201.214.200")
        assert tasks.query(topup_id, stk.daraja, give_up_after_s=3600,
                           redis=stk.redis) == "credited"
    assert queries_received(daraja_sim) == 1
