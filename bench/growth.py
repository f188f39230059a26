"""Growth: the credit's latency and ``GET /v1/wallet``'s with a thousand and with a million
ledger entries already in the database, all of them on the wallet being credited and read.

The history is bulk-loaded in SQL (generate_series): one succeeded top-up per entry, with its
stored callback and its ``credited`` history row (ids in increasing order, so that the load
appends to the indexes; the events table is left small, to keep the load within the budget).
Both databases are vacuumed and analysed, then measured in alternation, so that a change in
the machine's load falls on both alike.

The credit is the workers' own function (``workers.tasks.apply_callback``) called in this
process one at a time inside a per-message connection, as the worker middleware does: its
latency is the database work of one credit, without queueing.
"""
from __future__ import annotations

import time

from bench.harness import Bench
from bench.load import percentile

SIZES = {"small": 1_000, "large": 1_000_000}
QUICK_LARGE = 50_000
CEILING = 1.2

LOAD_SQL = [
    ("top_up", """
    INSERT INTO top_up (id, account_id, provider, status, amount, phone, reference, metadata,
                        checkout_request_id, merchant_request_id, mpesa_receipt, credited_cents,
                        push_state, push_attempts, pushed_at, query_attempts, created_at,
                        updated_at, completed_at)
    SELECT 'tu_h' || lpad(g::text, 9, '0'), %(account)s, 'mpesa', 'succeeded', 1000,
           '2547' || lpad((g %% 100000000)::text, 8, '0'), 'H' || g, '{}',
           'ws_CO_h' || lpad(g::text, 9, '0'), 'm-h' || g, 'H' || lpad(g::text, 9, '0'),
           100000, 'sent', 1,
           now() - (%(n)s - g) * interval '1 second', 0,
           now() - (%(n)s - g) * interval '1 second', now() - (%(n)s - g) * interval '1 second',
           now() - (%(n)s - g) * interval '1 second'
      FROM generate_series(1, %(n)s) g"""),
    ("ledger_entry", """
    INSERT INTO ledger_entry (id, wallet_id, type, amount_cents, balance_after_cents, topup_id,
                              mpesa_receipt, description, source, created_at)
    SELECT 'le_h' || lpad(g::text, 9, '0'), %(wallet)s, 'top_up', 100000, 100000::bigint * g,
           'tu_h' || lpad(g::text, 9, '0'),
           'H' || lpad(g::text, 9, '0'), 'M-Pesa top-up H' || lpad(g::text, 9, '0'), 'callback',
           now() - (%(n)s - g) * interval '1 second'
      FROM generate_series(1, %(n)s) g"""),
    ("wallet", "UPDATE wallet SET balance_cents = 100000::bigint * %(n)s WHERE id = %(wallet)s"),
    ("callback", """
    INSERT INTO callback (received_at, remote_addr, body, checkout_request_id, result_code,
                          well_formed, applied_at, outcome)
    SELECT now() - (%(n)s - g) * interval '1 second', '196.201.214.200',
           '{"Body":{"stkCallback":{"CheckoutRequestID":"ws_CO_h' || lpad(g::text, 9, '0')
           || '","ResultCode":0}}}', 'ws_CO_h' || lpad(g::text, 9, '0'), '0', true,
           now() - (%(n)s - g) * interval '1 second', 'credited'
      FROM generate_series(1, %(n)s) g"""),
    ("topup_event", """
    INSERT INTO topup_event (topup_id, kind, detail, created_at)
    SELECT 'tu_h' || lpad(g::text, 9, '0'), 'credited',
           '{"amount_cents": 100000, "source": "callback"}',
           now() - (%(n)s - g) * interval '1 second'
      FROM generate_series(1, %(n)s) g"""),
]


def run(bench: Bench) -> dict:
    stack = bench.stack
    large = QUICK_LARGE if bench.quick else SIZES["large"]
    sizes = {"small": SIZES["small"], "large": large}
    dbs, loaded = {}, {}
    for label, n in sizes.items():
        url = stack.new_database(f"growth_{label}")
        account_id, keys, wallet_id = bench.account(url, f"growth {label}")
        started = time.monotonic()
        tables = _bulk_load(stack, url, account_id, wallet_id, n)
        loaded[label] = {"entries": n, "seconds": round(time.monotonic() - started, 1),
                         "tables": tables}
        # the credits to measure: top-ups pushed and waiting, their callbacks stored
        k = 60 if bench.quick else 300
        seqs = bench.pending_topups_with_callbacks(url, account_id, k, f"g{label[0]}0")
        dbs[label] = {"url": url, "keys": keys, "seqs": seqs, "account": account_id}

    credit = _credit_latency(bench, dbs)
    reads = _read_latency(bench, dbs)
    ratios = {
        "credit_p50": _ratio(credit["large"]["p50_ms"], credit["small"]["p50_ms"]),
        "credit_p99": _ratio(credit["large"]["p99_ms"], credit["small"]["p99_ms"]),
        "wallet_p50": _ratio(reads["large"]["p50_ms"], reads["small"]["p50_ms"]),
        "wallet_p99": _ratio(reads["large"]["p99_ms"], reads["small"]["p99_ms"]),
    }
    return {
        "title": "Growth",
        "settings": {"sizes": sizes, "note": None if large == SIZES["large"] else
                     f"quick mode: {large:,} entries instead of 1,000,000"},
        "loaded": loaded, "credit": credit, "reads": reads, "ratios": ratios,
        "floors": [
            {"id": "growth_credit",
             "measure": f"credit latency, 1,000 → {large:,} entries (p50)",
             "floor": f"≤ {CEILING}×", "figure": ratios["credit_p50"],
             "met": ratios["credit_p50"] is not None and ratios["credit_p50"] <= CEILING},
            {"id": "growth_wallet",
             "measure": f"wallet read (GET /v1/wallet) latency, 1,000 → {large:,} entries "
                        "(p50)",
             "floor": f"≤ {CEILING}×", "figure": ratios["wallet_p50"],
             "met": ratios["wallet_p50"] is not None and ratios["wallet_p50"] <= CEILING},
        ],
    }


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def _bulk_load(stack, url: str, account_id: str, wallet_id: int, n: int) -> list[str]:
    """The top-ups first, then the tables that point at them, side by side on their own
    connections; foreign keys are not re-checked row by row (the rows are made consistent)."""
    import threading

    conn = stack.pg(url)
    with conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'public'")
        present = {row[0] for row in cur.fetchall()}
    conn.close()
    params = {"account": account_id, "wallet": wallet_id, "n": n}
    errors = []

    def load(table: str, sql: str) -> None:
        try:
            c = stack.pg(url)
            with c.cursor() as cur:
                cur.execute("SET synchronous_commit = off")  # a bulk load, not the ledger
                cur.execute("SET session_replication_role = replica")  # no per-row FK checks
                cur.execute(sql, params)
            c.close()
        except Exception as exc:  # noqa: BLE001 - raised below
            errors.append(f"{table}: {exc}")

    steps = [(t, sql) for t, sql in LOAD_SQL if t in present]
    load(*steps[0])                      # top_up: the others refer to it
    threads = [threading.Thread(target=load, args=step) for step in steps[1:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)   # a million rows take about half a minute
    if any(thread.is_alive() for thread in threads):
        raise RuntimeError("the bulk load did not finish within 10 minutes")
    if errors:
        raise RuntimeError("; ".join(errors))
    conn = stack.pg(url)
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    conn.close()
    return [t for t, _ in steps]


def _credit_latency(bench: Bench, dbs: dict) -> dict:
    import bootstrap
    bootstrap.configure("workers")  # settings, broker, runtime: what a worker process has
    from ledger import db
    from workers import tasks
    databases = {label: db.open_database(info["url"]) for label, info in dbs.items()}
    timings = {label: [] for label in dbs}
    block = 25
    k = len(next(iter(dbs.values()))["seqs"])
    for start in range(0, k, block):
        for label, info in dbs.items():   # alternate: both see the same machine
            db.database.initialize(databases[label])
            for seq in info["seqs"][start:start + block]:
                began = time.perf_counter()
                with db.connection():
                    outcome = tasks.apply_callback(seq)
                timings[label].append((time.perf_counter() - began) * 1000)
                if outcome != "credited":
                    raise RuntimeError(f"growth credit {seq} in {label}: {outcome}")
    for database in databases.values():
        database.close_all()
    return {label: {"credits": len(ms), "p50_ms": round(percentile(ms, 50), 3),
                    "p99_ms": round(percentile(ms, 99), 3),
                    "mean_ms": round(sum(ms) / len(ms), 3)}
            for label, ms in timings.items()}


def _read_latency(bench: Bench, dbs: dict) -> dict:
    """Sequential ``GET /v1/wallet`` against two APIs (one per database), one request to each
    in turn, over keep-alive connections: the two see the same machine, request by request."""
    import http.client

    stack = bench.stack
    servers = {label: stack.start_api(f"growth-api-{label}", stack.env(info["url"]))
               for label, info in dbs.items()}
    rounds = 100 if bench.quick else 300
    warm_up = 10   # the first requests warm the connection and the caches
    timings = {label: [] for label in dbs}
    try:
        conns = {}
        for label, (_, base) in servers.items():
            host, port = base.rsplit("/", 1)[1].split(":")
            conns[label] = http.client.HTTPConnection(host, int(port), timeout=10)
        labels = list(dbs)
        for i in range(rounds + warm_up):
            for label in (labels if i % 2 else labels[::-1]):
                headers = {"Authorization": f"Bearer {dbs[label]['keys'][0]}"}
                began = time.perf_counter()
                conns[label].request("GET", "/v1/wallet", headers=headers)
                answer = conns[label].getresponse()
                answer.read()
                elapsed = (time.perf_counter() - began) * 1000
                if answer.status != 200:
                    raise RuntimeError(f"GET /v1/wallet on {label}: {answer.status}")
                if i >= warm_up:
                    timings[label].append(elapsed)
        for conn in conns.values():
            conn.close()
    finally:
        for label in dbs:
            stack.stop(f"growth-api-{label}")
    return {label: {"requests": len(ms), "p50_ms": round(percentile(ms, 50), 3),
                    "p99_ms": round(percentile(ms, 99), 3)}
            for label, ms in timings.items()}
