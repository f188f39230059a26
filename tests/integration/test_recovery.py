"""Nothing lost when a part dies: a worker killed in the middle of crediting, Redis and
PostgreSQL restarted in the middle of a run. Real processes, killed on purpose; each test
ends in balances and statuses held against what the simulator says happened.

Redis and PostgreSQL are the session's shared servers: a test that stops one starts it again
before it ends, whatever happens.
"""
import contextlib
import signal
import threading

import psycopg2

from tests.integration.checks import (
    FAST, assert_every_topup_is_as_the_simulator_decided, credited_times, submit,
    wait_until_settled_and_quiet,
)
from tests.integration.system import sim_call
from tests.waiting import wait_until


def start(system, *, scheduler=True, threads=4, **env):
    system.env.update({**FAST, **env})
    system.start_api(workers=2, threads=4)
    system.start_workers(processes=1, threads=threads)
    if scheduler:
        system.start_scheduler(interval=1)
    return system.create_account()


def backends_waiting_on_locks(cursor) -> list[str]:
    cursor.execute("SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                   "AND wait_event_type = 'Lock'")
    return [row[0] for row in cursor.fetchall()]


def test_a_worker_killed_in_the_middle_of_crediting_leaves_every_topup_credited_once(
        pg_system, simulator):
    # STK Query far away: what the dead worker held must come back through the sweeps
    account_id, key = start(pg_system, threads=4, STK_QUERY_AFTER_S="120")
    observer = psycopg2.connect(pg_system.env["DATABASE_URL"])
    observer.autocommit = True
    blocker = psycopg2.connect(pg_system.env["DATABASE_URL"])
    try:
        # Hold the wallet's row lock: every credit stops half-way, its top-up already
        # updated, its ledger entry and balance waiting, nothing committed.
        with blocker.cursor() as cur:
            cur.execute("SELECT balance_cents FROM wallet WHERE account_id = %s FOR UPDATE",
                        (account_id,))
        created = [submit(pg_system, key, 100 + n, f"2547200000{n:02d}") for n in range(12)]
        with observer.cursor() as cur:
            # all four worker threads stuck mid-transaction
            waiting = wait_until(lambda: len(w := backends_waiting_on_locks(cur)) >= 4 and w,
                                 timeout=30, message="every worker thread to be mid-credit")
            # the credit's own UPDATE of the wallet
            assert any(q.startswith('UPDATE "wallet"') for q in waiting), waiting

            pg_system.stop_process("workers", sig=signal.SIGKILL)

            cur.execute("SELECT (SELECT count(*) FROM ledger_entry), "
                        "(SELECT count(*) FROM top_up WHERE status <> 'pending'), "
                        "(SELECT balance_cents FROM wallet WHERE account_id = %s)", (account_id,))
            assert cur.fetchone() == (0, 0, 0)   # nothing credited, nothing half-credited
        blocker.rollback()   # the dead worker's transactions die with their connections
    finally:
        blocker.close()
        observer.close()

    pg_system.start_workers(processes=1, threads=4)
    wait_until_settled_and_quiet(pg_system, key, simulator, timeout=90)
    topups = assert_every_topup_is_as_the_simulator_decided(
        pg_system, key, simulator, [t["id"] for t in created])
    assert {t["status"] for t in topups.values()} == {"succeeded"}
    assert credited_times() == {topup_id: 1 for topup_id in topups}


class Client(threading.Thread):
    """Submits top-ups one after another, as a careful client does (the same
    Idempotency-Key again after a 503 or a lost answer), and remembers what was accepted."""

    def __init__(self, system, key, requests_):
        super().__init__(daemon=True)
        self.system, self.key, self.requests = system, key, requests_
        self.accepted: list[dict] = []
        self.refusals: list = []   # 503s and lost answers, each followed by a retry
        self.error: BaseException | None = None

    def run(self):
        try:
            for amount, phone in self.requests:
                self.accepted.append(submit(self.system, self.key, amount, phone,
                                            refusals=self.refusals))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


@contextlib.contextmanager
def killed(server):
    """The server SIGKILLed (a crash, not a clean stop), then started again on the same port
    with the same data, whatever happens inside."""
    server.kill()
    try:
        yield
    finally:
        server.start()


def run_through_a_crash(system, simulator, server, *, outage_felt):
    sim_call(simulator, "POST", "/__sim/config",
             {"drop_callback_rate": 0.2, "failure_rate": 0.2, "seed": 4242})
    _, key = start(system)
    requests_ = [(10 + n, f"2547300{n:05d}") for n in range(90)]
    client = Client(system, key, requests_)
    client.start()
    wait_until(lambda: len(client.accepted) >= 30 or client.error, timeout=60,
               message="a third of the run to be accepted")
    with killed(server):
        wait_until(lambda: outage_felt(client) or client.error, timeout=30,
                   message="the outage to be felt")
    client.join(timeout=120)
    assert client.error is None, client.error
    assert len(client.accepted) == len(requests_)

    wait_until_settled_and_quiet(system, key, simulator, timeout=120)
    topups = assert_every_topup_is_as_the_simulator_decided(
        system, key, simulator, [t["id"] for t in client.accepted])
    assert {t["status"] for t in topups.values()} == {"succeeded", "failed"}
    return topups


def test_redis_crashing_in_the_middle_of_a_run_loses_nothing_accepted_and_credits_nothing_twice(
        pg_system, simulator, redis_server):
    # With Redis down the API still accepts (the database is the record) but cannot enqueue:
    # the outage lasts until 15 top-ups were accepted during it.
    during = []

    def outage_felt(client):
        during.append(len(client.accepted))
        return during[-1] - during[0] >= 15
    run_through_a_crash(pg_system, simulator, redis_server, outage_felt=outage_felt)


def test_postgresql_crashing_in_the_middle_of_a_run_loses_nothing_accepted_and_credits_nothing_twice(
        pg_system, simulator, postgres_server):
    # With PostgreSQL down nothing can be accepted (503): the outage lasts until the client
    # was refused 10 times.
    def outage_felt(client):
        return len(client.refusals) >= 10
    run_through_a_crash(pg_system, simulator, postgres_server, outage_felt=outage_felt)
