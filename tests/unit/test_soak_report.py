"""The soak's summary says what a person needs first: the seed and its replay command, each
check with its counts, and the stalls and dead worker threads that are not checks."""
from collections import Counter

from soak.faults import InjectedFault
from soak.invariants import Verdict
from soak.observed import TopUpRow
from soak.plan import make_plan
from soak.report import replay_command, settling_line, summary, workers_line


def topup(reference, status="succeeded", settled_after_s=1.0):
    return TopUpRow("tu_" + reference, "acct", reference, status, 10, None, None, None, "sent",
                    settled_after_s)


def test_the_replay_command_names_everything_that_shapes_the_plan():
    assert replay_command(make_plan(5, 300)) == "make soak SEED=5 N=300 FAULTS=4 RATE=10"
    narrowed = make_plan(5, 300, fault_kinds=("worker_kill",), left_out=("query_pending",))
    assert replay_command(narrowed).endswith(
        "--seed 5 --n 300 --faults 4 --rate 10 --fault-kinds worker_kill "
        "--leave-out query_pending")


def test_the_settling_line_names_the_top_ups_slower_than_two_minutes():
    line = settling_line([topup("A", settled_after_s=0.5), topup("B", settled_after_s=905),
                          topup("C", status="pending", settled_after_s=None)])
    assert "slowest 15m 05s" in line and "1 over 2 minutes: B 15m 05s" in line


def test_the_workers_line_counts_dead_threads_and_the_consumers_that_failed():
    assert workers_line({}) == "  workers     no thread died"
    line = workers_line({"workers-a": Counter({"threads died": 2, "queries.DQ": 3})})
    assert "2 threads died" in line and "workers-a: queries.DQ 3" in line


def test_the_summary_passes_only_when_every_check_passed_everything_settled_and_every_fault_went_in():
    plan = make_plan(5, 300)
    passing = Verdict("a check", 3, "3 things", ())
    failing = Verdict("another", 3, "3 things", ("SOAK0000001: wrong",))
    injected = [InjectedFault(f, f.at_s, 1.0) for f in plan.faults]
    times = {"setup": 1, "load": 30, "settling": 5, "checks": 1, "total": 37}
    topups = [topup("SOAK0000001")]
    lines = summary(plan, injected, [passing], topups, times, True)
    assert lines[0] == "soak summary" and "seed        5" in lines[1]
    assert lines[-1].endswith("PASS") and "    PASS  a check: 3 things" in lines
    assert summary(plan, injected, [passing, failing], topups, times, True)[-1].endswith("FAIL")
    assert "          - SOAK0000001: wrong" in summary(plan, injected, [failing], topups, times,
                                                       True)
    assert summary(plan, injected, [passing], topups, times, False)[-1].endswith("FAIL")
    broken = [InjectedFault(plan.faults[0], 1.0, 1.0, "ServerStartError: no")] + injected[1:]
    assert summary(plan, broken, [passing], topups, times, True)[-1].endswith("FAIL")
