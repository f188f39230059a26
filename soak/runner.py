"""One soak run: servers, the gateway's processes and the simulator started; the plan's load
and faults run; the system left to settle; the invariants checked; the summary printed.

Everything listens on 127.0.0.1 only. Redis and PostgreSQL come from ``topupctl/devservers.py``
(this run's own, unless the caller hands in running ones, as the integration test does); the
gateway runs as in ``tests/integration/system.py``: gunicorn, two ``dramatiq workers`` groups
(so that one may be killed or stopped while the other goes on) and ``topupctl scheduler``,
with the recovery tests' short sweep delays (``FAST``). Every wait is bounded.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import peewee
import redis

from ledger import db
from ledger.models import TopUp
from simulator.server import SimulatorConfig, SimulatorServer
from soak import report
from soak.customers import SUBMIT_DEADLINE_S, Customers
from soak.faults import FaultInjector, InjectedFault
from soak.invariants import Verdict, check_all
from soak.observed import history, read
from soak.plan import DEFAULT_N, DEFAULT_RATE, FAULT_KINDS, WORKER_GROUPS, Plan, make_plan
from tests.integration.checks import FAST, every_callback_delivered_and_applied
from tests.integration.system import System
from topupctl.devservers import PostgresServer, RedisServer
from tests.waiting import WaitTimedOut, wait_until

# The simulator: an outcome is final, and called back, this long after the push; a late
# callback comes well after STK_QUERY_AFTER_S (FAST: 2 s), so that the query settles first.
CALLBACK_DELAY_S = 0.2
LATE_CALLBACK_S = 6.0
# A top-up still unresolved STK_GIVE_UP_AFTER_S after its push becomes `unknown` (or `failed`
# `not_sent` if it was never sent), without a last query. The soak's is longer than the
# longest wait the gateway itself plans before asking Daraja again, so that a top-up is given
# up on only where no query could settle it: a query chain whose message was lost (with a
# worker, or in a Redis restart) is re-driven by the scheduler once its `next_query_at` is
# overdue, and after a "still processing" or an unanswered query that is 15 minutes ahead
# (workers/tasks.py, QUERY_RECHECK_S); a chain can be lost again, by a later fault, after
# Dramatiq handed it back. So: the load's length, those 15 minutes, and five more.
QUERY_RECHECK_S = 900
GIVE_UP_MARGIN_S = 300
WORKER_THREADS = 8
SETTLE_MARGIN_S = 120      # beyond the give-up deadline, for the last sweeps and callbacks
_databases = itertools.count()
REFERENCE = re.compile(r"\bSOAK\d{7}\b")
CONSUMER = re.compile(r"ConsumerThread\(([\w.]+)\)")


@dataclass
class Options:
    seed: int
    n: int = DEFAULT_N
    faults: int | None = None
    rate: float = DEFAULT_RATE
    workdir: Path = Path("var/soak")
    give_up_after_s: int | None = None    # None: the load's length + QUERY_RECHECK_S + margin
    worker_threads: int = WORKER_THREADS
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    left_out: tuple[str, ...] = ()           # simulator behaviours the plan does not use


@dataclass
class Outcome:
    plan: Plan
    passed: bool
    settled: bool
    verdicts: list[Verdict]
    injected: list[InjectedFault]
    summary: list[str]
    times: dict[str, float] = field(default_factory=dict)


def statuses() -> Counter | None:
    """Top-ups by status, or None while the database does not answer (a restart)."""
    try:
        with db.connection():
            return Counter(dict(TopUp.select(TopUp.status, peewee.fn.COUNT(TopUp.seq))
                                .group_by(TopUp.status).tuples()))
    except (peewee.OperationalError, peewee.InterfaceError):
        db.discard_connection()   # a connection that died with the server is not used again
        return None


def pending_top_ups() -> list | None:
    """The pending top-ups' rows (a few columns), or None while the database does not
    answer."""
    try:
        with db.connection():
            return list(TopUp.select(TopUp.reference, TopUp.push_state,
                                     TopUp.checkout_request_id)
                        .where(TopUp.status == "pending").limit(1000))
    except (peewee.OperationalError, peewee.InterfaceError):
        db.discard_connection()
        return None


def only_giving_up_can_settle(pending: list, daraja) -> bool:
    """Whether nothing but the give-up deadline can settle these pending top-ups: each one's
    push answer was lost (ambiguous, no CheckoutRequestID) and no paid callback from its prompt
    came, or there was no prompt at all. Waiting for their deadline would add nothing the
    checks need (soak.invariants counts them as left open)."""
    if any(t.push_state != "ambiguous" or t.checkout_request_id is not None for t in pending):
        return False
    references = {t.reference for t in pending}
    return not any(t["result_code"] == 0 and t["callbacks_delivered"]
                   for t in daraja.transactions() if t["account_reference"] in references)


class Progress:
    """A line every ``every_s`` seconds while polling: the time, submissions, top-ups by
    status and faults done."""

    def __init__(self, say, plan: Plan, customers: Customers, injector: FaultInjector,
                 started: float, every_s: float):
        self.say, self.plan, self.customers, self.injector = say, plan, customers, injector
        self.started, self.every_s = started, every_s
        self.next_at = started + every_s

    def tick(self, phase: str) -> None:
        now = time.monotonic()
        if now < self.next_at:
            return
        # while settling, little changes from one line to the next
        self.next_at = now + (self.every_s if phase == "load" else max(self.every_s, 30.0))
        counts = statuses()
        ledger = ("database unavailable" if counts is None else
                  " ".join(f"{s} {counts.get(s, 0)}"
                           for s in ("pending", "succeeded", "failed", "unknown")))
        self.say(f"  {now - self.started:6.0f}s {phase:<8} submitted "
                 f"{self.customers.finished}/{self.plan.n}  {ledger}  faults "
                 f"{len(self.injector.injected)}/{len(self.plan.faults)}")


def dead_worker_threads(workdir: Path) -> dict[str, Counter]:
    """Threads that died in each worker group's processes ("Exception in thread" in its log),
    and the consumers that met an unexpected error there (Dramatiq closes and restarts a
    consumer after one; a second error while closing kills its thread). Not a check of the
    ledger, but a worker process that lost a consumer thread no longer takes that queue's
    messages, and the summary says so."""
    found = {}
    for group in WORKER_GROUPS:
        path = workdir / f"{group}.log"
        if not path.exists():
            continue
        counts: Counter = Counter()
        with open(path, encoding="utf-8", errors="replace") as log:
            for line in log:
                if line.startswith("Exception in thread"):
                    counts["threads died"] += 1
                elif "Consumer encountered an unexpected error" in line:
                    consumer = CONSUMER.search(line)
                    counts[consumer.group(1) if consumer else "a consumer"] += 1
        if counts:
            found[group] = counts
    return found


def write_findings(path: Path, plan: Plan, observed, verdicts: list[Verdict]) -> int:
    """For every top-up a violation names, every one left pending or unknown, and the
    slowest of those that took over ``report.SLOW_S`` to settle: what the plan said, what the
    simulator did and the ledger's history of it, in one JSON file. Returns how many top-ups
    it describes."""
    references = {ref for verdict in verdicts for violation in verdict.violations
                  for ref in REFERENCE.findall(violation)}
    references |= {t.reference for t in observed.topups if t.status in ("pending", "unknown")}
    references |= {ref for seconds, ref in report.slowest(observed.topups)
                   if seconds > report.SLOW_S}
    if not references:
        return 0
    planned = plan.by_reference()
    try:
        ledger = history(references)
    except (peewee.OperationalError, peewee.InterfaceError) as exc:
        ledger = {"error": f"the ledger could not be read: {exc}"}
    path.write_text(json.dumps({ref: {
        "planned": dataclasses.asdict(planned[ref]) if ref in planned else None,
        "prompts": [dataclasses.asdict(t) for t in observed.transactions if t.reference == ref],
        "refusals": [dataclasses.asdict(r) for r in observed.refusals if r.reference == ref],
        "ledger": ledger.get(ref)} for ref in sorted(references)}, indent=1, default=str))
    return len(references)


def run(options: Options, *, say=print, redis_server=None, postgres_server=None) -> Outcome:
    """Run the soak; every line of its output goes to ``say`` and to ``soak.log`` in the
    work directory. The seed comes first."""
    workdir = Path(options.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "soak.log", "a", encoding="utf-8") as log:
        def say_and_keep(line: str) -> None:
            say(line)
            log.write(line + "\n")
            log.flush()
        return _run(options, workdir, say_and_keep, redis_server, postgres_server)


def _run(options: Options, workdir: Path, say, redis_server, postgres_server) -> Outcome:
    say(f"soak: seed {options.seed}")
    started = time.monotonic()
    plan = make_plan(options.seed, options.n, faults=options.faults, rate=options.rate,
                     fault_kinds=options.fault_kinds, left_out=options.left_out)
    say(f"soak: {plan.n} top-ups at {plan.rate:g}/s (about {plan.load_s:.0f}s of load), "
        f"{len(plan.faults)} faults; replay with: {report.replay_command(plan)}")
    give_up_after_s = options.give_up_after_s or (
        int(plan.load_s) + QUERY_RECHECK_S + GIVE_UP_MARGIN_S)
    say(f"soak: logs in {workdir}; STK_GIVE_UP_AFTER_S={give_up_after_s}")
    times: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        if redis_server is None:
            redis_server = RedisServer(workdir / "redis").start()
            stack.callback(redis_server.close)
        if postgres_server is None:
            postgres_server = PostgresServer(workdir / "postgres").start()
            stack.callback(postgres_server.close)
        database_url = postgres_server.create_database(
            f"soak_{plan.seed % 10**9}_{os.getpid()}_{next(_databases)}")
        redis.Redis.from_url(redis_server.url).flushdb()

        simulator = SimulatorServer(host="127.0.0.1", port=0, config=SimulatorConfig(
            callback_delay_s=CALLBACK_DELAY_S, late_callback_delay_s=LATE_CALLBACK_S)).start()
        stack.callback(simulator.stop)
        simulator.daraja.add_scripts(plan.simulator_scripts())

        system = System(workdir, redis_url=redis_server.url, database_url=database_url,
                        simulator_url=simulator.url, extra_env={
                            **FAST, "STK_GIVE_UP_AFTER_S": str(give_up_after_s),
                            "WORKER_METRICS_PORT": "0"})
        stack.callback(system.stop)
        accounts = [system.create_account(f"soak account {i + 1}") for i in range(plan.accounts)]
        account_ids, keys = [a for a, _ in accounts], [k for _, k in accounts]
        system.start_api(workers=2, threads=4)
        for group in WORKER_GROUPS:
            system.start_workers(processes=1, threads=options.worker_threads, name=group)
        system.start_scheduler(interval=1)

        stop = threading.Event()
        customers = Customers(system, plan, keys, stop)
        injector = FaultInjector(system, redis_server, postgres_server,
                                 worker_threads=options.worker_threads, stop=stop, say=say)
        # on the way out, in this order: stop the threads, let stopped workers go on, then
        # the processes and servers registered above (last registered, first called)
        stack.callback(injector.release)
        stack.callback(customers.join, 30)
        stack.callback(injector.join, 60)
        stack.callback(stop.set)

        times["setup"] = time.monotonic() - started
        load_started = time.monotonic()
        customers.start(load_started)
        injector.start(load_started, plan.faults)
        progress = Progress(say, plan, customers, injector, load_started,
                            every_s=max(5.0, min(30.0, plan.load_s / 20)))

        def load_done():
            progress.tick("load")
            return customers.done() and injector.done()
        try:
            wait_until(load_done, timeout=plan.load_s + SUBMIT_DEADLINE_S + 300, interval=0.5,
                       message="the load and the faults to finish")
        except WaitTimedOut as exc:
            say(f"soak: {exc}")
        times["load"] = time.monotonic() - load_started

        settle_started = time.monotonic()

        def settled():
            progress.tick("settling")
            if not (customers.done() and injector.done()):
                return False
            if simulator.daraja.stats()["callbacks_due"]:
                return False
            try:
                waiting = pending_top_ups()
                if waiting is None or not only_giving_up_can_settle(waiting, simulator.daraja):
                    return False
                return every_callback_delivered_and_applied(simulator)
            except (peewee.OperationalError, peewee.InterfaceError):
                db.discard_connection()
                return False
        try:
            wait_until(settled, timeout=give_up_after_s + SETTLE_MARGIN_S, interval=1,
                       message="every top-up to settle and every callback to be applied")
            is_settled = True
        except WaitTimedOut as exc:
            say(f"soak: {exc}")
            is_settled = False
        times["settling"] = time.monotonic() - settle_started

        checks_started = time.monotonic()
        observed = read(simulator.daraja, submissions=customers.submissions,
                        forgeries=customers.forgeries)
        verdicts = check_all(plan, observed, account_ids)
        times["checks"] = time.monotonic() - checks_started
        findings = write_findings(workdir / "findings.json", plan, observed, verdicts)
    times["total"] = time.monotonic() - started
    injected = list(injector.injected)
    lines = report.summary(plan, injected, verdicts, observed.topups, times, is_settled,
                           dead_worker_threads(workdir))
    if findings:
        lines.insert(-1, f"  findings    {findings} top-ups' plan, prompts and ledger history "
                         f"in {workdir / 'findings.json'}")
    for line in lines:
        say(line)
    (workdir / "summary.txt").write_text("\n".join(lines) + "\n")
    passed = report.run_passed(injected, verdicts, is_settled)
    return Outcome(plan, passed, is_settled, verdicts, injected, lines, times)
