"""Daraja calls per settled top-up, counted by the simulator: OAuth, STK push and STK query
requests for N top-ups with every callback delivered, and with 20% of callbacks dropped (STK
queries settle those). STK_QUERY_AFTER_S is 2 s in both runs and the scheduler sweeps every
second, so a query also comes due for a top-up whose callback waits in the queue, and must
not call Daraja."""
from __future__ import annotations

from bench.end_to_end import burst
from bench.harness import Bench

DROP_RATE = 0.2
QUERY_AFTER_S = 2
SWEEP_EVERY_S = 1
CEILINGS = {0.0: 1.01, DROP_RATE: 1.3}
TOPUPS = {True: 150, False: 1000}


def run(bench: Bench) -> dict:
    stack = bench.stack
    n = TOPUPS[bench.quick]
    rows = []
    for drop in CEILINGS:
        url = stack.new_database(f"calls_{int(drop * 100)}")
        _, keys, _ = bench.account(url, "calls", keys=8)
        env = stack.env(url, STK_QUERY_AFTER_S=QUERY_AFTER_S, STK_QUERY_BACKOFF_S=1)
        stack.flush_redis()   # the OAuth token cache too: the first top-up fetches one
        stack.reset_simulator(drop_callback_rate=drop, seed=7)
        _, api_url = stack.start_api("calls-api", env)
        stack.start_workers("calls-workers", {**env, "PUBLIC_BASE_URL": api_url})
        stack.start_scheduler("calls-scheduler", env, interval_s=SWEEP_EVERY_S)
        conn = stack.pg(url)
        try:
            result = burst(bench, conn, api_url, keys, n, connections=8, webhooks=False)
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FILTER (WHERE status IN ('succeeded', 'failed')),"
                            " count(*) FILTER (WHERE status = 'succeeded') FROM top_up")
                settled, succeeded = cur.fetchone()
        finally:
            conn.close()
            stack.stop("calls-scheduler")
            stack.stop("calls-workers")
            stack.stop("calls-api")
        stats = stack.sim("GET", "/__sim/stats")
        calls = stats["oauth"] + stats["stkpush"] + stats["stkquery"]
        rows.append({
            "dropped_callbacks": drop, "topups": result["posted"], "settled": settled,
            "succeeded": succeeded, "oauth": stats["oauth"], "stkpush": stats["stkpush"],
            "stkquery": stats["stkquery"], "callbacks_sent": stats["callbacks_sent"],
            "calls": calls,
            "calls_per_settled": round(calls / settled, 4) if settled else None,
            "complete": result["complete"],
        })
    stack.reset_simulator()
    floors = []
    for row in rows:
        drop = row["dropped_callbacks"]
        figure = row["calls_per_settled"]
        floors.append({
            "id": f"daraja_calls_{int(drop * 100)}",
            "measure": "Daraja calls per settled top-up, "
                       + ("all callbacks" if not drop else f"{drop:.0%} of callbacks dropped"),
            "floor": f"≤ {CEILINGS[drop]}", "figure": figure,
            "met": figure is not None and figure <= CEILINGS[drop] and row["complete"]
            and row["settled"] == row["topups"]})
    return {
        "title": "Daraja calls per settled top-up",
        "settings": {"topups": n, "stk_query_after_s": QUERY_AFTER_S,
                     "scheduler_interval_s": SWEEP_EVERY_S,
                     "drop_rate": DROP_RATE},
        "rows": rows,
        "floors": floors,
    }
