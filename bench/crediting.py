"""Crediting one hot wallet: stored paid callbacks credited by ``dramatiq workers`` into ONE
wallet on PostgreSQL, against pgbench running the same SQL at the same concurrency, side by
side in alternating rounds.

The workers get stored callbacks for pushed top-ups (the state the callback endpoint leaves)
and one ``apply_callback`` message each, enqueued before they start: each message runs the
gateway's credit path as production runs it (``workers.tasks.apply_callback`` →
``ledger.settlement.settle_success``), including what it does around the credit's
transaction (reading the stored callback, marking it applied, announcing the webhook
delivery). The rate is taken from the first credit's ledger entry to the last's.

pgbench runs, in its default simple-query mode (each statement parsed and planned, as Peewee
sends them), the credit's transaction statement for statement as PostgreSQL's statement log
shows the gateway sending it: BEGIN; the top-up read by CheckoutRequestID; the conditional
UPDATE of the top-up … RETURNING; the orphan payment's UPDATE; the wallet's UPDATE …
RETURNING (its balance is carried into the next statements with ``\\gset``, as the gateway
carries it); the ledger entry, the top-up's ``credited`` history row and the
``wallet.top_up`` event, each INSERT … RETURNING seq; the read of the account's webhook
endpoints and the INSERT of the one delivery; COMMIT. Both accounts have one webhook
endpoint, so both sides write a delivery. The only statement outside the transaction is
pgbench's ``nextval`` (which top-up to credit), where the workers read the stored callback.

On a shared 2-core machine one run of either side is luck, so:

- first a warm-up on each side that is not counted (cold caches and plans);
- then rounds of a workers pass followed by a pgbench run, each pass on fresh rows of its own;
- a workers pass is sized from the workers' rate so far to last about as long as pgbench's
  run (``-T``), so both sides see the machine for the same stretch of time;
- before every pass the tables are vacuumed and analysed and a CHECKPOINT is taken, so each
  pass starts from the same state;
- the figure is the median of the rounds' ratios (a workers pass against the pgbench run
  right after it); every round is in the report.
"""
from __future__ import annotations

import re
import statistics
import subprocess

from bench.harness import Bench
from bench.stack import WORKER_PROCESSES, WORKER_THREADS, wait_until

FLOOR = 0.35

# what the credit reads of its top-up (ledger.settlement.CREDIT_READS)
TOPUP_COLUMNS = (
    '"t1"."id", "t1"."account_id", "t1"."provider", "t1"."status", "t1"."amount", '
    '"t1"."phone", "t1"."reference", "t1"."metadata", "t1"."checkout_request_id", '
    '"t1"."mpesa_receipt", "t1"."failure_code", "t1"."failure_reason", "t1"."flagged", '
    '"t1"."created_at", "t1"."updated_at", "t1"."completed_at", "t1"."channel"')

# {account} and {endpoint}: the pgbench account's id and its webhook endpoint's, written in
# as the gateway writes them (literals). :k is the top-up to credit, :wallet_id and :balance
# the wallet UPDATE's answer.
PGBENCH_SCRIPT = f"""\
SELECT nextval('bench_credit') AS k \\gset
BEGIN;
SELECT {TOPUP_COLUMNS} FROM "top_up" AS "t1"
 WHERE ("t1"."checkout_request_id" = 'ws_CO_pgb' || :k) LIMIT 1;
UPDATE "top_up" SET "status" = 'succeeded', "mpesa_receipt" = 'PG' || lpad(:k::text, 8, '0'),
       "credited_cents" = 100000, "flagged" = NULL, "completed_at" = now()::timestamp,
       "updated_at" = now()::timestamp, "next_query_at" = NULL
 WHERE (("top_up"."id" = 'tu_pgb' || :k) AND ("top_up"."status" IN ('pending', 'unknown')));
UPDATE "orphan_payment" SET "resolved_topup_id" = 'tu_pgb' || :k,
       "resolved_at" = now()::timestamp
 WHERE ((("orphan_payment"."checkout_request_id" = 'ws_CO_pgb' || :k)
         OR ("orphan_payment"."mpesa_receipt" = 'PG' || lpad(:k::text, 8, '0')))
        AND ("orphan_payment"."resolved_topup_id" IS NULL));
UPDATE "wallet" SET "balance_cents" = ("wallet"."balance_cents" + 100000),
       "updated_at" = now()::timestamp
 WHERE ("wallet"."account_id" = '{{account}}')
 RETURNING "wallet"."id" AS wallet_id, "wallet"."balance_cents" AS balance,
           "wallet"."currency" \\gset
INSERT INTO "ledger_entry" ("id", "wallet_id", "type", "amount_cents", "balance_after_cents",
                            "topup_id", "mpesa_receipt", "description", "source", "created_at")
VALUES ('le_pgb' || lpad(:k::text, 14, '0'), :wallet_id, 'top_up', 100000, :balance,
        'tu_pgb' || :k, 'PG' || lpad(:k::text, 8, '0'),
        'M-Pesa top-up PG' || lpad(:k::text, 8, '0'), 'callback', now()::timestamp)
RETURNING "ledger_entry"."seq";
INSERT INTO "topup_event" ("topup_id", "kind", "detail", "created_at")
VALUES ('tu_pgb' || :k, 'credited',
        '{{"amount_cents": 100000, "receipt": "PG' || lpad(:k::text, 8, '0')
        || '", "source": "callback", "ledger_entry": "le_pgb' || lpad(:k::text, 14, '0')
        || '", "balance_after_cents": ' || :balance || ', "flagged": null}}',
        now()::timestamp)
RETURNING "topup_event"."seq";
INSERT INTO "event" ("id", "account_id", "type", "topup_id", "data", "created_at")
VALUES ('evt_pgb' || lpad(:k::text, 13, '0'), '{{account}}', 'wallet.top_up', 'tu_pgb' || :k,
        '{{"topup":{{"id":"tu_pgb' || :k || '","object":"topup","provider":"mpesa",'
        || '"status":"succeeded","amount":1000,"currency":"KES","phone":"254800000000",'
        || '"reference":"PGB","metadata":{{}},"checkout_request_id":"ws_CO_pgb' || :k
        || '","mpesa_receipt":"PG' || lpad(:k::text, 8, '0') || '","failure_code":null,'
        || '"failure_reason":null,"channel":"stk_push","flagged":null,'
        || '"created_at":"2026-12-07T13:04:47Z",'
        || '"updated_at":"2026-12-07T13:04:47Z","completed_at":"2026-12-07T13:04:47Z"}},'
        || '"ledger_entry":"le_pgb' || lpad(:k::text, 14, '0') || '","amount_cents":100000,'
        || '"currency":"KES","balance":"' || (:balance / 100) || '.00","balance_cents":'
        || :balance || '}}', now()::timestamp)
RETURNING "event"."seq";
SELECT "t1"."id", "t1"."events" FROM "webhook_endpoint" AS "t1"
 WHERE (("t1"."account_id" = '{{account}}') AND ("t1"."deleted_at" IS NULL));
INSERT INTO "webhook_delivery" ("id", "event_id", "endpoint_id", "status", "attempts",
                                "next_attempt_at", "enqueued_at", "created_at", "updated_at")
VALUES ('whd_pgb' || lpad(:k::text, 13, '0'), 'evt_pgb' || lpad(:k::text, 13, '0'),
        '{{endpoint}}', 'pending', 0, now()::timestamp, now()::timestamp, now()::timestamp,
        now()::timestamp)
RETURNING "webhook_delivery"."seq";
COMMIT;
"""

# timed rounds (quick mode: True); pgbench gets as many clients as the workers have threads
ROUNDS = {True: 2, False: 3}
# pgbench's -T in a round, and the length the workers' pass is sized for
ROUND_SECONDS = {True: 3, False: 5}
WARM_UP_CREDITS = 300
WARM_UP_PGBENCH_SECONDS = 1
# bounds on a workers pass (credits): the rows are made before the pass, and take time
PASS_CREDITS = (300, 12000)


def run(bench: Bench) -> dict:
    stack = bench.stack
    url = stack.new_database("crediting")
    seconds = ROUND_SECONDS[bench.quick]
    concurrency = WORKER_PROCESSES * WORKER_THREADS
    account_id, _, _ = bench.account(url, "hot wallet (workers)")
    pg_account, _, _ = bench.account(url, "hot wallet (pgbench)")
    pg_endpoint = _webhook_endpoint(stack, url, pg_account)
    _webhook_endpoint(stack, url, account_id)
    script = bench.out / "pgbench-credit.sql"
    script.write_text(PGBENCH_SCRIPT.replace("{account}", pg_account)
                      .replace("{endpoint}", pg_endpoint))
    import bootstrap
    bootstrap.configure("workers")  # the broker and the actors, as the API sends them

    tags = (f"c{number:02d}" for number in range(100))
    # not counted: cold caches and plans, and a first rate to size the timed passes with
    warm_workers = _workers_pass(bench, url, account_id, WARM_UP_CREDITS, tag=next(tags))
    warm_pgbench = _pgbench(bench, url, script, pg_account, concurrency,
                            WARM_UP_PGBENCH_SECONDS)
    rounds = []
    for _round in range(ROUNDS[bench.quick]):
        rates = [r["workers"]["credits_per_s"] for r in rounds if r["workers"]["credits_per_s"]]
        n = _pass_size(rates or [warm_workers["credits_per_s"]], seconds)
        worker = _workers_pass(bench, url, account_id, n, tag=next(tags))
        pgbench = _pgbench(bench, url, script, pg_account, concurrency, seconds)
        rate, tps = worker["credits_per_s"], pgbench["tps"]
        rounds.append({"workers": worker, "pgbench": pgbench,
                       "ratio": round(rate / tps, 3) if rate and tps else None})
    ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]
    ratio = round(statistics.median(ratios), 3) if ratios else 0.0
    correctness = _check(stack, url, account_id)
    return {
        "title": "Crediting one hot wallet",
        "settings": {"workers": f"{WORKER_PROCESSES} × {WORKER_THREADS}",
                     "pgbench_clients": concurrency, "pgbench_mode": "simple (default)",
                     "rounds": len(rounds), "pgbench_seconds": seconds,
                     "warm_up": {"workers_credits": WARM_UP_CREDITS,
                                 "pgbench_seconds": WARM_UP_PGBENCH_SECONDS},
                     "pgbench_script": script.read_text()},
        "warm_up": {"workers": warm_workers, "pgbench": warm_pgbench},
        "rounds": rounds,
        "correctness": correctness,
        "headline": {"workers_credits_per_s": _median([r["workers"]["credits_per_s"]
                                                       for r in rounds]),
                     "pgbench_tps": _median([r["pgbench"]["tps"] for r in rounds]),
                     "ratio": ratio, "ratios": ratios},
        "floors": [{"id": "crediting",
                    "measure": "credits into one hot wallet vs pgbench, same SQL, default "
                               f"mode (median of {len(ratios)} alternating rounds)",
                    "floor": f"≥ {FLOOR}×", "figure": ratio,
                    "met": ratio >= FLOOR and correctness["ok"]}],
    }


def _median(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if known else None


def _pass_size(rates: list[float], seconds: float) -> int:
    """How many credits make a workers pass of about ``seconds`` at the rate seen so far."""
    known = [r for r in rates if r]
    rate = statistics.median(known) if known else 500.0
    low, high = PASS_CREDITS
    return int(min(high, max(low, round(rate * seconds, -2))))


def _webhook_endpoint(stack, url: str, account_id: str) -> str:
    """One webhook endpoint for ``wallet.top_up`` on the account, so that every credit writes
    a delivery as a merchant's does (never delivered here: only the callbacks queue runs)."""
    endpoint = f"whe_bench{account_id[-8:]}"
    conn = stack.pg(url)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO webhook_endpoint (id, account_id, url, events, secret, "
                    "created_at) VALUES (%s, %s, 'http://127.0.0.1:9/hooks', "
                    "'[\"wallet.top_up\"]', 'whsec_bench', now())", (endpoint, account_id))
    conn.close()
    return endpoint


def _settle(stack, url: str) -> None:
    """The same starting state for every timed pass, whichever side: the rows just made are
    vacuumed (hint bits set, visibility map, statistics) and their pages written out, so no
    checkpoint falls in the middle of one side's pass only."""
    conn = stack.pg(url)
    with conn.cursor() as cur:
        cur.execute("VACUUM (ANALYZE) top_up, callback, ledger_entry, wallet, topup_event, "
                    "event, webhook_delivery")
        cur.execute("CHECKPOINT")
    conn.close()


def _workers_pass(bench: Bench, url: str, account_id: str, n: int, *, tag: str) -> dict:
    from workers import actors
    stack = bench.stack
    stack.flush_redis()
    seqs = bench.pending_topups_with_callbacks(url, account_id, n, tag)
    for seq in seqs:
        actors.apply_callback.send(seq)
    _settle(stack, url)
    stack.start_workers("crediting-workers", stack.env(url), queues=["callbacks"])
    conn = stack.pg(url)
    try:
        with conn.cursor() as cur:
            def applied() -> int:
                cur.execute("SELECT count(*) FROM callback WHERE seq BETWEEN %s AND %s"
                            " AND applied_at IS NOT NULL", (min(seqs), max(seqs)))
                return cur.fetchone()[0]
            wait_until(applied, timeout=60, interval=0.01, message="a first credit")
            with bench.machine() as machine:
                # all of them, or as many as the time bound lets through (the rate is taken
                # from the ledger's timestamps, not from this poll)
                try:
                    wait_until(lambda: applied() >= n, timeout=max(15.0, n / 100),
                               interval=0.1, message="the credits")
                except TimeoutError:
                    pass
            cur.execute("""
                SELECT count(*), extract(epoch FROM max(le.created_at) - min(le.created_at))
                  FROM ledger_entry le WHERE le.topup_id LIKE %s""", (f"tu_{tag}%",))
            credited, span = cur.fetchone()
    finally:
        conn.close()
        stack.stop("crediting-workers")
    rate = (credited - 1) / float(span) if span else None
    return {"credits": n, "credited": credited, "span_s": round(float(span or 0), 2),
            "credits_per_s": round(rate, 1) if rate else None, "machine": machine.summary()}


def _pgbench(bench: Bench, url: str, script, account_id: str, clients: int,
             seconds: int) -> dict:
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
            SELECT 'tu_pgb' || g, %s, 'mpesa', 'pending', 1000, '254800000000', 'PGB', '{}',
                   'sent', 1, 0, 'ws_CO_pgb' || g, now(), now(), now()
              FROM generate_series(%s, %s) g""",
                    (account_id, start + 1, start + count))
        cur.execute("CREATE SEQUENCE IF NOT EXISTS bench_credit")
        cur.execute("SELECT setval('bench_credit', %s)", (start + 1,))
    conn.close()
    _settle(stack, url)
    argv = [str(stack.postgres.bindir / "pgbench"), "-n", "-M", "simple", "-c", str(clients),
            "-j", str(min(clients, 2)), "-T", str(seconds), "-f", str(script),
            "-h", stack.postgres.host, "-p", str(stack.postgres.port), "-U", "topup", database]
    with bench.machine() as machine:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                              env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    out = done.stdout
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed: {done.stderr[-800:]}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if failed and int(failed.group(1)):
        raise RuntimeError(f"pgbench transactions failed: {out[-800:]}")
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    transactions = int(processed.group(1)) if processed else 0
    credited = _pgbench_credits(stack, url, start + 1, start + count)
    if credited != transactions:
        # every transaction must have credited a pending top-up of its own, or it did less
        # work than a credit and the comparison would flatter pgbench
        raise RuntimeError(f"pgbench ran {transactions} transactions, credited {credited}")
    return {"tps": round(float(tps.group(1)), 1) if tps else None, "seconds": seconds,
            "transactions": transactions, "machine": machine.summary()}


def _pgbench_credits(stack, url: str, first: int, last: int) -> int:
    conn = stack.pg(url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM top_up t JOIN ledger_entry le ON le.topup_id = t.id "
                    "WHERE t.id = ANY (SELECT 'tu_pgb' || g FROM generate_series(%s, %s) g) "
                    "AND t.status = 'succeeded'", (first, last))
        credited = cur.fetchone()[0]
    conn.close()
    return credited


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
