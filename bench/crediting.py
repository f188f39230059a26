"""2. Crediting: paid callbacks applied by the workers into ONE hot wallet on PostgreSQL,
against the same SQL run by pgbench at the same concurrency, side by side.

The workers get stored callbacks for pushed top-ups (the state the callback endpoint leaves)
and one ``apply_callback`` message each, enqueued before they start; the rate is taken from
the first credit to the last. pgbench runs the credit transaction the brief names (the
conditional UPDATE of the top-up, the wallet UPDATE, the ledger INSERT, one transaction) on
the same tables, another hot wallet, and as many clients as the workers have threads.

On a shared 2-core machine one run of either side is luck (pgbench alone moved between 606
and 1,745 tps from run to run), so each configuration is measured in alternating rounds:

- first a warm-up on each side that is not counted (a short workers pass, then pgbench for
  1 s): the first pass after the database's creation pays for cold caches and plans;
- then rounds of a workers pass followed by a pgbench run, each pass on its own fresh rows
  (top-ups with their callbacks for the workers, pending top-ups for pgbench);
- the workers' pass is sized from their rate so far to last about as long as pgbench's run
  (``-T``), so both sides see the machine for the same stretch of time;
- before every timed pass, warm-up included, the tables are vacuumed and analysed and a
  CHECKPOINT is taken, so each pass starts from the same state (no bulk insert's dead
  tuples or hint bits, no checkpoint falling in one side's pass only);
- the figure is the median of the rounds' ratios (each workers pass against the pgbench run
  right after it); every round is kept in the report.
"""
from __future__ import annotations

import re
import statistics
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

# (worker processes, threads each, timed rounds): pgbench gets processes × threads clients.
# The first configuration is the goal's.
PLAN = {True: [(2, 4, 2)], False: [(2, 4, 3), (1, 1, 2)]}
# pgbench's -T in a round, and the length the workers' pass is sized for
ROUND_SECONDS = {True: 3, False: 5}
WARM_UP_CREDITS = 300
WARM_UP_PGBENCH_SECONDS = 1
# bounds on a workers pass (credits): the rows are made before the pass, and take time
PASS_CREDITS = (300, 12000)


def run(bench: Bench) -> dict:
    stack = bench.stack
    url = stack.new_database("crediting")
    plan = PLAN[bench.quick]
    seconds = ROUND_SECONDS[bench.quick]
    account_id, _, wallet_id = bench.account(url, "hot wallet (workers)")
    _, _, pg_wallet = bench.account(url, "hot wallet (pgbench)")
    import bootstrap
    bootstrap.configure("workers")  # the broker and the actors, as the API sends them

    tags = _tags()
    rows = []
    for processes, threads, rounds in plan:
        concurrency = processes * threads
        # not counted: cold caches and plans, and a first rate to size the timed passes with
        warm_workers, _ = _workers_pass(bench, url, account_id, processes, threads,
                                        WARM_UP_CREDITS, tag=next(tags))
        warm_pgbench = _pgbench(bench, url, pg_wallet, concurrency, WARM_UP_PGBENCH_SECONDS)
        timed = []
        for _round in range(rounds):
            # sized from the timed passes' rates once there are any (a short warm-up pass,
            # its start a larger share of it, runs slower)
            rates = [r["workers"]["credits_per_s"] for r in timed]
            n = _pass_size([r for r in rates if r] or [warm_workers["credits_per_s"]], seconds)
            worker, _ = _workers_pass(bench, url, account_id, processes, threads, n,
                                      tag=next(tags))
            pgbench = _pgbench(bench, url, pg_wallet, concurrency, seconds)
            rate, tps = worker["credits_per_s"], pgbench["tps"]
            timed.append({"workers": worker, "pgbench": pgbench,
                          "ratio": round(rate / tps, 3) if rate and tps else None})
        row = _row(processes, threads, timed, warm_workers, warm_pgbench)
        if not rows and not bench.quick:
            # for reference, not the goal's baseline: pgbench with its statements prepared
            # on the server, as the workers' are (its default mode parses and plans each one)
            prepared = _pgbench(bench, url, pg_wallet, concurrency, seconds, mode="prepared")
            rate = row["workers"]["credits_per_s"]
            row["pgbench_prepared"] = {
                "tps": prepared["tps"], "cpu_ms_per_transaction":
                    prepared["cpu_ms_per_transaction"],
                "ratio": round(rate / prepared["tps"], 3) if rate and prepared["tps"] else None}
        rows.append(row)
    profile = None
    if bench.profile_enabled:
        # a pass of its own, so that the profiler does not weigh on the figures above
        processes, threads, _ = plan[0]
        _, profile = _workers_pass(bench, url, account_id, processes, threads,
                                   300 if bench.quick else 1000, tag="cpx", spy_seconds=3)

    correctness = _check(stack, url, account_id)
    head = rows[0]
    ratio = head["ratio"] or 0
    return {
        "title": "Crediting one hot wallet",
        "settings": {"configs": [[p, t] for p, t, _ in plan],
                     "rounds": {f"{p}x{t}": r for p, t, r in plan},
                     "pgbench_seconds": seconds,
                     "warm_up": {"workers_credits": WARM_UP_CREDITS,
                                 "pgbench_seconds": WARM_UP_PGBENCH_SECONDS},
                     "before_each_pass": "VACUUM (ANALYZE) of the four tables, CHECKPOINT",
                     "headline": "median of the rounds' ratios (workers pass / the pgbench "
                                 "run right after it)",
                     "pgbench_script": PGBENCH_SCRIPT.replace("{wallet}", "<wallet>")},
        "rows": rows,
        "correctness": correctness,
        "headline": {"concurrency": head["concurrency"],
                     "workers_credits_per_s": head["workers"]["credits_per_s"],
                     "pgbench_tps": head["pgbench"]["tps"], "ratio": head["ratio"],
                     "ratios": [r["ratio"] for r in head["rounds"]]},
        "goals": [{"goal": "credits/s ≥ 0.5 × pgbench's on the same SQL and concurrency "
                           f"(median of {len(head['rounds'])} alternating rounds)",
                   "value": ratio, "target": 0.5, "met": ratio >= 0.5}],
        "profile": profile,
    }


def _tags():
    """Three-character tags for the workers' passes (their top-ups are ``tu_<tag>NNNNNNN``),
    none of them ``pgb`` (pgbench's) nor ``cpx`` (the profiled pass)."""
    number = 0
    while True:
        yield f"c{number:02d}"
        number += 1


def _pass_size(rates: list[float | None], seconds: float) -> int:
    """How many credits make a workers pass of about ``seconds`` at the rate seen so far."""
    known = [r for r in rates if r]
    rate = statistics.median(known) if known else 500.0
    low, high = PASS_CREDITS
    return int(min(high, max(low, round(rate * seconds, -2))))


def _row(processes: int, threads: int, rounds: list[dict], warm_workers: dict,
         warm_pgbench: dict) -> dict:
    """One configuration: every round, and the medians (the ratio: median of the rounds')."""
    ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]
    workers = [r["workers"] for r in rounds]
    pgbench = [r["pgbench"] for r in rounds]
    return {
        "processes": processes, "threads": threads, "concurrency": processes * threads,
        "rounds": rounds,
        "warm_up": {"workers": warm_workers, "pgbench": warm_pgbench},
        # medians over the rounds, figure by figure
        "workers": {"credited": sum(w["credited"] for w in workers),
                    "credits_per_s": _median([w["credits_per_s"] for w in workers]),
                    "span_s": _median([w["span_s"] for w in workers]),
                    "cpu_ms_per_credit": {role: ms for role, ms in _medians(
                        [w["cpu_ms_per_credit"] for w in workers]).items() if ms >= 0.005},
                    "connections": _medians([w["connections"] for w in workers])},
        "pgbench": {"tps": _median([p["tps"] for p in pgbench]),
                    "cpu_ms_per_transaction": {role: ms for role, ms in _medians(
                        [p.get("cpu_ms_per_transaction", {}) for p in pgbench]).items()
                        if ms >= 0.005},
                    "latency_ms": _median([p["latency_ms"] for p in pgbench]),
                    "seconds": pgbench[0]["seconds"] if pgbench else None,
                    "connections": _medians([p["connections"] for p in pgbench])},
        "ratio": _median(ratios, 3),
        "ratio_range": [min(ratios), max(ratios)] if ratios else None,
    }


def _median(values: list, digits: int = 1):
    known = [v for v in values if v is not None]
    return round(statistics.median(known), digits) if known else None


def _medians(dicts: list[dict]) -> dict:
    """Key by key, the median over the dicts (a key one of them lacks counts as 0)."""
    keys = sorted({k for d in dicts for k in d}, key=lambda k: -sum(d.get(k, 0) for d in dicts))
    return {k: round(statistics.median(d.get(k, 0) for d in dicts), 3) for k in keys}


def _settle(stack, url: str) -> None:
    """The same starting state for every timed pass, whichever side: the rows just made are
    vacuumed (hint bits set, visibility map, statistics) and their pages written out, so no
    checkpoint falls in the middle of one side's pass only."""
    conn = stack.pg(url)
    with conn.cursor() as cur:
        cur.execute("VACUUM (ANALYZE) top_up, callback, ledger_entry, wallet")
        cur.execute("CHECKPOINT")
    conn.close()


def _workers_pass(bench: Bench, url: str, account_id: str, processes: int, threads: int,
                  n: int, *, tag: str, spy_seconds: int = 0) -> tuple[dict, dict | None]:
    from workers import actors
    stack = bench.stack
    stack.flush_redis()
    seqs = bench.pending_topups_with_callbacks(url, account_id, n, tag)
    for seq in seqs:
        actors.apply_callback.send(seq)
    _settle(stack, url)
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
                # all of them, or as many as the time bound lets through (the rate is taken
                # from the ledger's timestamps, not from this poll)
                try:
                    wait_until(lambda: applied() >= n, timeout=max(15.0, n / 200),
                               interval=0.1, message="the credits")
                except TimeoutError:
                    pass
            cur.execute("""
                SELECT count(*), extract(epoch FROM max(le.created_at) - min(le.created_at)),
                       extract(epoch FROM
                               percentile_disc(0.9) WITHIN GROUP (ORDER BY le.created_at)
                               - percentile_disc(0.1) WITHIN GROUP (ORDER BY le.created_at))
                  FROM ledger_entry le JOIN top_up t ON t.id = le.topup_id
                 WHERE t.id LIKE %s""", (f"tu_{tag}%",))
            credited, span, middle = cur.fetchone()
    finally:
        conn.close()
        if spy:
            profile = spy.wait()
        stack.stop("crediting-workers")
    rate = (credited - 1) / float(span) if span else None
    return {"credits": n, "credited": credited, "span_s": round(float(span or 0), 2),
            "credits_per_s": round(rate, 1) if rate else None,
            # for a reader who wonders what the workers' start and last credits weigh: the
            # rate between the 10th and the 90th percentile of the credits' times
            "credits_per_s_middle_80pct": round(0.8 * credited / float(middle), 1)
            if middle else None,
            "machine": meter.summary(), "connections": activity.summary(),
            "cpu_ms_per_credit": {role: round(sec * 1000 / max(1, credited - at_start), 3)
                                  for role, sec in meter.by_role.items() if sec > 0.005},
            }, profile


def _pgbench(bench: Bench, url: str, wallet_id: int, clients: int, seconds: int, *,
             mode: str = "simple") -> dict:
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
    conn.close()
    _settle(stack, url)
    script = bench.out / "pgbench-credit.sql"
    script.write_text(PGBENCH_SCRIPT.replace("{wallet}", str(wallet_id)))
    argv = [str(stack.postgres.bindir / "pgbench"), "-n", "-M", mode, "-c", str(clients),
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
    done = re.search(r"number of transactions actually processed: (\d+)", out)
    transactions = int(done.group(1)) if done else 0
    return {"tps": round(float(tps.group(1)), 1) if tps else None,
            "latency_ms": float(latency.group(1)) if latency else None, "seconds": seconds,
            "transactions": transactions,
            "machine": meter.summary(), "connections": activity.summary(),
            "cpu_ms_per_transaction": {
                role: round(sec * 1000 / transactions, 3)
                for role, sec in meter.by_role.items() if sec > 0.005 and transactions}}


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
