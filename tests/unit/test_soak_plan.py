"""The soak's plan is drawn from its seed alone: the same seed gives the same top-ups and
faults, and the plan keeps the promises the run and the checks rely on."""
from collections import Counter

import pytest

from ledger.phones import normalize_kenyan_mobile
from simulator.rules import BEHAVIOUR_NAMES, plan_for_phone
from soak.plan import (
    ACCOUNTS, CALLBACKS, FAULT_KINDS, WORKER_GROUPS, default_faults, make_plan,
)


def test_the_same_seed_gives_the_same_plan_and_another_seed_another():
    assert make_plan(1234, 500) == make_plan(1234, 500)
    assert make_plan(1234, 500).topups != make_plan(1235, 500).topups
    assert make_plan(1234, 500).faults != make_plan(1235, 500).faults


def test_more_or_fewer_faults_leave_the_top_ups_of_a_seed_as_they_were():
    # the top-ups are drawn before the faults: a failing seed replayed with other FAULTS
    # still sends the same top-ups
    assert make_plan(7, 300).topups == make_plan(7, 300, faults=9).topups


def test_every_reference_is_unique_and_a_valid_account_reference():
    plan = make_plan(99, 2000)
    references = [t.reference for t in plan.topups]
    assert len(set(references)) == len(references)
    assert all(r.isalnum() and 1 <= len(r) <= 12 for r in references)
    assert plan.by_reference()[references[5]].index == 5


def test_phones_are_ordinary_valid_numbers_shared_by_accounts_and_amounts_unique_per_phone():
    plan = make_plan(5, 3000)
    phones = {t.phone for t in plan.topups}
    assert all(normalize_kenyan_mobile(p) == p for p in phones)
    assert all(not plan_for_phone(p).magic for p in phones)   # the script decides, not the phone
    accounts_per_phone = Counter()
    for phone in phones:
        accounts_per_phone[len({t.account for t in plan.topups if t.phone == phone})] += 1
    assert accounts_per_phone[1] and sum(n for k, n in accounts_per_phone.items() if k > 1)
    pairs = [(t.phone, t.amount) for t in plan.topups]
    assert len(set(pairs)) == len(pairs)
    assert {t.account for t in plan.topups} == set(range(ACCOUNTS))


def test_outcomes_and_callback_behaviours_are_all_drawn_and_scripted_for_the_simulator():
    plan = make_plan(11, 3000)
    counts = plan.counts()
    assert set(counts["outcome"]) == {"paid", "failed", "refused"}
    assert set(counts["callback"]) == set(CALLBACKS)
    assert sum(counts["forgery"].values()) > 30
    for topup in plan.topups:
        script = topup.simulator_script()
        if topup.outcome == "paid":
            assert script["result_code"] == 0
        if topup.outcome == "failed":
            assert script["result_code"] != 0 and topup.callback != "answer_lost"
        if topup.outcome == "refused":
            assert script["fault"].startswith("refuse:400.002.02:")
        else:
            assert script["fault"] is None or script["fault"] in BEHAVIOUR_NAMES
        assert topup.forged_receipt.startswith("FORGED") and len(topup.forged_receipt) > 10
    scripts = plan.simulator_scripts()
    assert len(scripts) == 3000 and scripts[plan.topups[0].reference] == \
        plan.topups[0].simulator_script()


def test_top_ups_are_paced_at_the_rate_and_faults_spread_over_the_load_one_after_another():
    plan = make_plan(3, 10_000, rate=12.5)
    assert [t.at_s for t in plan.topups[:3]] == [0.0, 0.08, 0.16]
    assert plan.load_s == 800
    assert len(plan.faults) == default_faults(10_000) >= 30
    assert Counter(f.kind for f in plan.faults).keys() == set(FAULT_KINDS)
    times = [f.at_s for f in plan.faults]
    assert times == sorted(times) and 0 < times[0] < plan.load_s / len(plan.faults)
    assert times[-1] < plan.load_s * 1.25
    for fault, following in zip(plan.faults, plan.faults[1:]):
        # each stop or outage is over, and a few seconds past, before the next fault is due
        assert fault.at_s + fault.duration_s + 2.9 < following.at_s
    stops = [f.duration_s for f in plan.faults if f.kind == "worker_stop"]
    assert min(stops) >= 2 and max(stops) > 20   # past the sweep that calls a push abandoned
    for fault in plan.faults:
        assert (fault.target in WORKER_GROUPS) == fault.kind.startswith("worker")
        assert fault.crash is False or fault.kind.endswith("restart")
        assert fault.describe()


def test_a_short_plan_has_one_fault_of_each_kind_and_kinds_can_be_chosen():
    assert sorted(f.kind for f in make_plan(8, 300).faults) == sorted(FAULT_KINDS)
    chosen = make_plan(8, 300, faults=6, fault_kinds=("worker_kill", "postgres_restart"))
    assert Counter(f.kind for f in chosen.faults) == {"worker_kill": 3, "postgres_restart": 3}
    assert make_plan(8, 300, faults=0).faults == ()


def test_a_behaviour_left_out_is_replaced_by_its_classs_first_and_nothing_else_changes():
    full, without = make_plan(4, 2000), make_plan(4, 2000, left_out=("query_pending",))
    assert any(t.behaviour == "query_pending" for t in full.topups)
    assert not any(t.behaviour == "query_pending" for t in without.topups)
    for a, b in zip(full.topups, without.topups):
        if a.behaviour == "query_pending":
            assert (b.callback, b.behaviour) == ("dropped", "no_callback")
        else:
            assert a == b
    assert full.faults == without.faults


@pytest.mark.parametrize("arguments", [
    {"n": 0}, {"n": 10, "rate": 0}, {"n": 10, "faults": -1},
    {"n": 10, "fault_kinds": ("meteor_strike",)}, {"n": 10, "fault_kinds": ()},
    {"n": 10, "left_out": ("no_callback",)}, {"n": 10, "left_out": ("slow_answer",)},
])
def test_a_plan_that_cannot_be_run_is_refused(arguments):
    with pytest.raises(ValueError):
        make_plan(1, **arguments)
