"""2. Crediting: paid callbacks applied by the workers into ONE hot wallet on PostgreSQL,
against the same SQL run by pgbench at the same concurrency.

The workers get stored callbacks for pushed top-ups (the state the callback endpoint leaves)
and one ``apply_callback`` message each, enqueued before they start; the rate is taken from
the first credit to the last. pgbench runs the credit transaction the brief names (the
conditional UPDATE of the top-up, the wallet UPDATE, the ledger INSERT, one transaction) on
the same tables, another hot wallet, and as many clients as the workers have threads.
"""
from __future__ import annotations

import re
import subprocess

from bench.harness import Bench
from bench.profile import PgActivity
from bench.stack import wait_until

PGBENCH_SCRIPT = """\
SELECT nextval('bench_credit') AS k \\gset
BEGIN;
UPDATE top_up SET status = 'succeeded', mpesa_receipt = 'PG' || lpad(:k::text, 8, '0'),
       credited_cents = 100000, flagged = NULL, completed_at = now(), updated_at = now(),
       next_query_at = NULL
 WHERE id = 'tu_pgb' || :k AND status IN ('pending', 'unknown');
UPDATE wallet SET balance_cents = balance_cents + 100000, updated_at = now() WHERE id = {wallet};
INSERT INTO ledger_entry (id, wallet_id, type, amount_cents, balance_after_cents, topup_id,
                          mpesa_receipt, description, source, created_at)
SELECT 'le_pgb' || :k, id, 'top_up', 100000, balance_cents, 'tu_pgb' || :k,
       'PG' || lpad(:k::text, 8, '0'), 'M-Pesa top-up', 'callback', now()
  FROM wallet WHERE id = {wallet};
END;
"""


def run(bench: Bench) -> dict:
    stack = bench.stack
    url = stack.new_database("crediting")
    # (worker processes, threads each): pgbench gets processes × threads clients
    configs = [(2, 4)] if bench.quick else [(1, 1), (2, 4)]
    pg_seconds = 3 if bench.quick else 6
    account_id, _, wallet_id = bench.account(url, "hot wallet (workers)")
    _, _, pg_wallet = bench.account(url, "hot wallet (pgbench)")
    import workers  # noqa: F401  (the broker and the actors, as the API sends them)

    rows = []
    for index, (processes, threads) in enumerate(configs):
        concurrency = processes * threads
        n = 500 if bench.quick else (800 if concurrency == 1 else 3000)
        worker, _ = _workers_pass(bench, url, account_id, processes, threads, n,
                                  tag=f"c{index}{concurrency % 10}")
        tps, latency, pg_machine, pg_activity = _pgbench(bench, url, pg_wallet, concurrency,
                                                         pg_seconds)
        rate = worker["credits_per_s"]
        rows.append({
            "processes": processes, "threads": threads, "concurrency": concurrency,
            "workers": worker,
            "pgbench": {"tps": tps, "latency_ms": latency, "seconds": pg_seconds,
                        "machine": pg_machine, "connections": pg_activity},
            "ratio": round(rate / tps, 3) if rate and tps else None,
        })
    profile = None
    if bench.profile_enabled:
        # a pass of its own, so that the profiler does not weigh on the figures above
        processes, threads = configs[-1]
        _, profile = _workers_pass(bench, url, account_id, processes, threads,
                                   300 if bench.quick else 1000, tag="cpx", spy_seconds=3)

    correctness = _check(stack, url, account_id)
    head = rows[-1]
    ratio = head["ratio"] or 0
    return {
        "title": "Crediting one hot wallet",
        "settings": {"configs": configs, "pgbench_seconds": pg_seconds,
                     "pgbench_script": PGBENCH_SCRIPT.replace("{wallet}", "<wallet>")},
        "rows": rows,
        "correctness": correctness,
        "headline": {"concurrency": head["concurrency"],
                     "workers_credits_per_s": head["workers"]["credits_per_s"],
                     "pgbench_tps": head["pgbench"]["tps"], "ratio": head["ratio"]},
        "goals": [{"goal": "credits/s ≥ 0.5 × pgbench's on the same SQL and concurrency",
                   "value": ratio, "target": 0.5, "met": ratio >= 0.5}],
        "profile": profile,
    }


def _workers_pass(bench: Bench, url: str, account_id: str, processes: int, threads: int,
                  n: int, *, tag: str, spy_seconds: int = 0) -> tuple[dict, dict | None]:
    from workers import actors
    stack = bench.stack
    stack.flush_redis()
    seqs = bench.pending_topups_with_callbacks(url, account_id, n, tag)
    for seq in seqs:
        actors.apply_callback.send(seq)
    proc = stack.start_workers("crediting-workers", stack.env(url), processes=processes,
                               threads=threads, queues=["callbacks"])
    # The meters cover the credits, not the workers' start: they begin at the first credit.
    meter = bench.meter()
    activity = PgActivity(lambda: stack.pg(url), url.rsplit("/", 1)[1])
    spy = profile = None
    conn = stack.pg(url)
    try:
        with conn.cursor() as cur:
            def applied() -> int:
                cur.execute("SELECT count(*) FROM callback WHERE seq BETWEEN %s AND %s"
                            " AND applied_at IS NOT NULL", (min(seqs), max(seqs)))
                return cur.fetchone()[0]
            at_start = wait_until(applied, timeout=60, interval=0.01, message="a first credit")
            with meter, activity:
                if spy_seconds:
                    spy = bench.spy(proc.pid, spy_seconds, "crediting-workers")
                # all of them, or as many as the time bound lets through
                try:
                    wait_until(lambda: applied() >= n, timeout=8 if bench.quick else 15,
                               interval=0.05, message="the credits")
                except TimeoutError:
                    pass
            cur.execute("""
                SELECT count(*), extract(epoch FROM max(le.created_at) - min(le.created_at))
                  FROM ledger_entry le JOIN top_up t ON t.id = le.topup_id
                 WHERE t.id LIKE %s""", (f"tu_{tag}%",))
            credited, span = cur.fetchone()
    finally:
        conn.close()
        if spy:
            profile = spy.wait()
        stack.stop("crediting-workers")
    rate = (credited - 1) / float(span) if span else None
    return {"credited": credited, "span_s": round(float(span or 0), 2),
            "credits_per_s": round(rate, 1) if rate else None,
            "machine": meter.summary(), "connections": activity.summary(),
            "cpu_ms_per_credit": {role: round(sec * 1000 / max(1, credited - at_start), 3)
                                  for role, sec in meter.by_role.items() if sec > 0.005},
            }, profile


def _pgbench(bench: Bench, url: str, wallet_id: int, clients: int, seconds: int):
    stack = bench.stack
    database = url.rsplit("/", 1)[1]
    conn = stack.pg(url)
    with conn.cursor() as cur:
        # enough pending top-ups for the fastest run pgbench could make
        cur.execute("SELECT coalesce(max(substr(id, 7)::bigint), 0) FROM top_up "
                    "WHERE id LIKE 'tu_pgb%%'")
        start = cur.fetchone()[0]
        count = 8000 * seconds
        cur.execute("""
            INSERT INTO top_up (id, account_id, provider, status, amount, phone, reference,
                                metadata, push_state, push_attempts, query_attempts,
                                checkout_request_id, pushed_at, created_at, updated_at)
            SELECT 'tu_pgb' || g, (SELECT account_id FROM wallet WHERE id = %s), 'mpesa',
                   'pending', 1000, '2548' || lpad(g::text, 8, '0'), 'PGB', '{}', 'sent', 1, 0,
                   'ws_CO_pgb' || g, now(), now(), now()
              FROM generate_series(%s, %s) g""", (wallet_id, start + 1, start + count))
        cur.execute("CREATE SEQUENCE IF NOT EXISTS bench_credit")
        cur.execute("SELECT setval('bench_credit', %s)", (start + 1,))
        cur.execute("VACUUM ANALYZE top_up")
    conn.close()
    script = bench.out / "pgbench-credit.sql"
    script.write_text(PGBENCH_SCRIPT.replace("{wallet}", str(wallet_id)))
    argv = [str(stack.postgres.bindir / "pgbench"), "-n", "-c", str(clients),
            "-j", str(min(clients, 2)), "-T", str(seconds), "-f", str(script),
            "-h", stack.postgres.host, "-p", str(stack.postgres.port), "-U", "topup", database]
    with bench.meter() as meter, PgActivity(lambda: stack.pg(url), database) as activity:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
        bench.roles.add(proc.pid, "pgbench")
        out, err = proc.communicate(timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed: {err[-800:]}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if failed and int(failed.group(1)):
        raise RuntimeError(f"pgbench transactions failed: {out[-800:]}")
    return (round(float(tps.group(1)), 1) if tps else None,
            float(latency.group(1)) if latency else None, meter.summary(), activity.summary())


def _check(stack, url: str, account_id: str) -> dict:
    """Every credit once: the wallet's balance is the sum of its entries, one per top-up."""
    conn = stack.pg(url)
    with conn.cursor() as cur:
        cur.execute("""
            SELECT w.balance_cents, coalesce(sum(le.amount_cents), 0), count(le.id),
                   count(DISTINCT le.topup_id),
                   (SELECT count(*) FROM top_up WHERE account_id = %s AND status = 'succeeded')
              FROM wallet w LEFT JOIN ledger_entry le ON le.wallet_id = w.id
             WHERE w.account_id = %s GROUP BY w.balance_cents""", (account_id, account_id))
        balance, total, entries, topups, succeeded = cur.fetchone()
    conn.close()
    return {"balance_cents": balance, "sum_of_entries_cents": int(total), "entries": entries,
            "distinct_topups": topups, "succeeded_topups": succeeded,
            "ok": balance == total and entries == topups == succeeded}
