"""The soak's summary: seed, what was planned, the faults done, each invariant PASS or FAIL
with its counts, and the wall time. Written for a person reading a terminal or a CI log; it
names top-ups by reference and accounts by id, never a phone."""
from __future__ import annotations

from collections import Counter

from soak.faults import InjectedFault
from soak.invariants import Verdict
from soak.plan import FAULT_KINDS, Plan

VIOLATIONS_SHOWN = 10
SLOW_S = 120          # a top-up that took longer than this to settle is named in the summary
SLOW_SHOWN = 5


def _counts(counter: Counter) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counter.items())) or "none"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def replay_command(plan: Plan) -> str:
    """The command that runs this plan again."""
    if plan.fault_kinds == FAULT_KINDS and not plan.left_out:
        return (f"make soak SEED={plan.seed} N={plan.n} FAULTS={len(plan.faults)} "
                f"RATE={plan.rate:g}")
    return (f".venv/bin/python -m soak --seed {plan.seed} --n {plan.n} --faults "
            f"{len(plan.faults)} --rate {plan.rate:g} --fault-kinds {','.join(plan.fault_kinds)}"
            + (f" --leave-out {','.join(plan.left_out)}" if plan.left_out else ""))


def fault_counts(injected: list[InjectedFault]) -> str:
    kinds: Counter = Counter()
    manner: dict[str, Counter] = {}
    for fault in injected:
        kind = fault.planned.kind
        kinds[kind] += 1
        if kind.endswith("restart"):
            manner.setdefault(kind, Counter())["crash" if fault.planned.crash else "clean"] += 1
    return ", ".join(f"{kind} {n}" + (f" ({_counts(manner[kind])})" if kind in manner else "")
                     for kind, n in sorted(kinds.items())) or "none"


def slowest(topups, count: int = SLOW_SHOWN) -> list[tuple[float, str]]:
    """(seconds, reference) of the top-ups that took longest to settle, slowest first."""
    return sorted(((t.settled_after_s, t.reference) for t in topups
                   if t.settled_after_s is not None), reverse=True)[:count]


def settling_line(topups) -> str:
    """How long top-ups took from the request to their final status: not an invariant (no
    timing is asserted), but a stall shows here."""
    times = sorted(t.settled_after_s for t in topups if t.settled_after_s is not None)
    if not times:
        return "  settling    nothing settled"
    slow = [(s, r) for s, r in slowest(topups, len(times)) if s > SLOW_S]
    line = (f"  settling    request to final status: median {times[len(times) // 2]:.1f}s, "
            f"99th percentile {times[int(len(times) * 0.99)]:.1f}s, slowest "
            f"{_duration(times[-1])}")
    if slow:
        line += (f"; {len(slow)} over {SLOW_S // 60} minutes: " + ", ".join(
            f"{reference} {_duration(seconds)}" for seconds, reference in slow[:SLOW_SHOWN])
            + (" …" if len(slow) > SLOW_SHOWN else ""))
    return line


def workers_line(dead_threads: dict[str, Counter]) -> str:
    """What the worker groups' logs say about threads that died (not an invariant)."""
    if not dead_threads:
        return "  workers     no thread died"
    died = sum(c["threads died"] for c in dead_threads.values())
    parts = [f"{group}: {_counts(Counter({k: n for k, n in c.items() if k != 'threads died'}))}"
             for group, c in sorted(dead_threads.items())]
    return (f"  workers     {died} threads died (\"Exception in thread\" in the logs); consumers "
            f"that met an unexpected error: {'; '.join(parts)}")


def run_passed(injected: list[InjectedFault], verdicts: list[Verdict], settled: bool) -> bool:
    """A run passes when it settled, every fault went in and every check held."""
    return settled and not any(f.error for f in injected) and all(v.passed for v in verdicts)


def summary(plan: Plan, injected: list[InjectedFault], verdicts: list[Verdict],
            topups, times: dict[str, float], settled: bool,
            dead_threads: dict[str, Counter] | None = None) -> list[str]:
    counts = plan.counts()
    failed_injections = [f for f in injected if f.error]
    passed = run_passed(injected, verdicts, settled)
    lines = [
        "soak summary",
        f"  seed        {plan.seed}    (replay: {replay_command(plan)})",
        f"  top-ups     {plan.n} at {plan.rate:g}/s across {plan.accounts} accounts; planned "
        f"outcomes: {_counts(counts['outcome'])}",
        f"  callbacks   {_counts(counts['callback'])}; forged without the token: "
        f"{sum(counts['forgery'].values())} ({_counts(counts['forgery'])})",
        f"  faults      {len(injected)} of {len(plan.faults)} injected: {fault_counts(injected)}",
    ]
    late = [f.late_s for f in injected if f.late_s >= 1]
    if late:
        lines.append(f"              {len(late)} started late (the one before ran long), "
                     f"at most by {max(late):.0f}s")
    lines += [f"              FAILED: {f.planned.describe()}: {f.error}" for f in failed_injections]
    lines.append(f"  ended       {_counts(Counter(t.status for t in topups))}"
                 + ("" if settled else "  (NOT SETTLED before the deadline)"))
    lines.append(settling_line(topups))
    lines.append(workers_line(dead_threads or {}))
    lines.append("  invariants")
    for verdict in verdicts:
        lines.append(f"    {'PASS' if verdict.passed else 'FAIL'}  {verdict.name}: "
                     f"{verdict.detail}")
        for violation in verdict.violations[:VIOLATIONS_SHOWN]:
            lines.append(f"          - {violation}")
        if len(verdict.violations) > VIOLATIONS_SHOWN:
            lines.append(f"          … and {len(verdict.violations) - VIOLATIONS_SHOWN} more")
    phases = ", ".join(f"{name} {_duration(seconds)}" for name, seconds in times.items()
                       if name != "total")
    lines.append(f"  wall time   {_duration(times['total'])} ({phases})")
    lines.append(f"  result      {'PASS' if passed else 'FAIL'}")
    return lines
