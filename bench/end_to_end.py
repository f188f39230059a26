"""3. End to end, and 6. memory: top-ups per second from ``POST /v1/topups`` to the wallet
credited (and the ``wallet.top_up`` webhook delivered, when the schema has webhooks), with
the simulator answering at once, for 1, 2 and 4 worker processes; request→credit latency at
half that capacity; against Dramatiq's own throughput for a no-op actor on the same Redis,
counted per message; peak resident memory of an API process and of a worker process.

One account (one wallet) receives every top-up, through several API keys: the API's write
limit is per key, and one key could not ask for more than that limit.
"""
from __future__ import annotations

import time

import requests

from bench.harness import Bench
from bench.machine import peak_rss_mb
from bench.stack import _children, find_free_port, wait_until

THREADS = 4
KEYS = 8


def has_webhooks() -> bool:
    from ledger import models
    return any("webhook" in m._meta.table_name for m in models.ALL_MODELS)


def run(bench: Bench) -> dict:
    stack = bench.stack
    url = stack.new_database("e2e")
    account_id, keys, _ = bench.account(url, "e2e merchant", keys=KEYS)
    webhooks = has_webhooks()
    env = stack.env(url, WEBHOOK_ALLOW_PRIVATE=1 if webhooks else 0)
    stack.reset_simulator()
    api, api_url = stack.start_api("e2e-api", env)
    env["PUBLIC_BASE_URL"] = api_url   # the CallBackURL the workers send with each push
    if webhooks:
        port = find_free_port()
        stack.spawn("webhook-receiver", [stack_python(), "-m", "bench.receiver", str(port)],
                    env=env, role="webhook receiver")
        wait_until(lambda: stack._answers(f"http://127.0.0.1:{port}/count"), timeout=10,
                   message="the webhook receiver")
        answer = requests.post(api_url + "/v1/webhook_endpoints", timeout=10,
                               headers={"Authorization": f"Bearer {keys[0]}"},
                               json={"url": f"http://127.0.0.1:{port}/hooks",
                                     "events": ["wallet.top_up"]})
        if answer.status_code != 201:
            raise RuntimeError(f"webhook endpoint refused: {answer.status_code} {answer.text}")
    processes_list = [2] if bench.quick else [1, 2, 4]
    n = 150 if bench.quick else 600
    post_s = 8 if bench.quick else 10   # the burst's posting is bounded in time as well
    paced_s = 3 if bench.quick else 6
    rows = []
    conn = stack.pg(url)
    try:
        for processes in processes_list:
            stack.flush_redis()
            workers = stack.start_workers("e2e-workers", env, processes=processes,
                                          threads=THREADS)
            # what the worker processes cost with nothing to do (polling Redis, heartbeats)
            time.sleep(1.0)
            with bench.meter() as idle:
                time.sleep(3.0)
            idle_ms = round(idle.by_role.get("workers", 0) * 1000 / idle.wall_s / processes, 1)
            # warm-up: the OAuth token, connection pools, imports on first use
            _burst(bench, conn, api_url, keys, 20, connections=2, webhooks=webhooks)
            with bench.meter() as meter:
                burst = _burst(bench, conn, api_url, keys, n, connections=16,
                               webhooks=webhooks, seconds=post_s)
            burst["machine"] = meter.summary()
            burst["cpu_ms_per_topup"] = {role: round(sec * 1000 / max(1, burst["credited"]), 3)
                                         for role, sec in meter.by_role.items() if sec > 0.005}
            rate = max(5.0, 0.5 * (burst["topups_per_s"] or 10))
            paced = _burst(bench, conn, api_url, keys, 0, connections=8, webhooks=webhooks,
                           rate=rate, seconds=paced_s)
            profile = None
            if processes == 2 and bench.profile_enabled:
                # a pass of its own, so that the profiler does not weigh on the figures above
                spy = bench.spy(workers.pid, 4, "e2e-workers")
                _burst(bench, conn, api_url, keys, 300, connections=16, webhooks=webhooks,
                       seconds=5)
                profile = spy.wait()
            memory = {
                "api_process_peak_rss_mb": max(
                    (peak_rss_mb(pid) or 0 for pid in _children(api.pid)), default=None),
                "worker_process_peak_rss_mb": max(
                    (peak_rss_mb(pid) or 0 for pid in _children(workers.pid)), default=None),
                "api_master_rss_mb": peak_rss_mb(api.pid),
                "workers_master_rss_mb": peak_rss_mb(workers.pid),
            }
            stack.stop("e2e-workers")
            noop = _noop(bench, processes)
            messages = 2 + (1 if webhooks else 0)
            per_message = (burst["topups_per_s"] or 0) * messages
            rows.append({"processes": processes, "threads": THREADS, "burst": burst,
                         "paced": paced, "memory": memory, "noop": noop, "profile": profile,
                         "idle_cpu_ms_per_s_per_process": idle_ms,
                         "messages_per_topup": messages,
                         "messages_per_s": round(per_message, 1),
                         "ratio_to_noop": round(per_message / noop["messages_per_s"], 3)
                         if noop.get("messages_per_s") else None})
    finally:
        conn.close()
        stack.stop("e2e-workers")
        stack.stop("e2e-api")
        stack.stop("webhook-receiver")
    best = max(rows, key=lambda r: r["burst"]["topups_per_s"] or 0)
    two = next((r for r in rows if r["processes"] == 2), rows[0])
    return {
        "title": "End to end",
        "settings": {"worker_processes": processes_list, "threads_per_process": THREADS,
                     "topups_per_burst": n, "burst_connections": 16,
                     "paced_seconds": paced_s, "api_keys": KEYS, "webhooks": webhooks,
                     "simulator": "callback_delay_s 0 (answers and calls back at once)",
                     "stk_query_after_s": "60 (default): the delayed query_topup message is "
                                          "enqueued, and fires after the run"},
        "rows": rows,
        "headline": {"best_topups_per_s": best["burst"]["topups_per_s"],
                     "best_processes": best["processes"],
                     "p50_ms_request_to_credit": two["paced"]["credit_latency_ms"]["p50"],
                     "p99_ms_request_to_credit": two["paced"]["credit_latency_ms"]["p99"],
                     "ratio_to_noop": two["ratio_to_noop"],
                     "api_process_peak_rss_mb": max(r["memory"]["api_process_peak_rss_mb"] or 0
                                                    for r in rows),
                     "worker_process_peak_rss_mb": max(
                         r["memory"]["worker_process_peak_rss_mb"] or 0 for r in rows)},
        "goals": [{"goal": "end to end ≥ 300 top-ups/s on 2 cores",
                   "value": best["burst"]["topups_per_s"], "target": 300,
                   "met": (best["burst"]["topups_per_s"] or 0) >= 300}],
    }


def stack_python() -> str:
    import sys
    return sys.executable


def _burst(bench: Bench, conn, api_url: str, keys: list[str], n: int, *, connections: int,
           webhooks: bool, rate: float | None = None, seconds: float = 60) -> dict:
    """POST ``n`` top-ups as fast as the API takes them (or at ``rate`` per second for
    ``seconds``), wait until every one is credited (and its webhook delivered)."""
    from bench.load import topup_request
    with conn.cursor() as cur:
        cur.execute("SELECT coalesce(max(seq), 0) FROM top_up")
        mark = cur.fetchone()[0]
    run = bench.run_number()
    delay_ms = connections / rate * 1000 if rate else 0

    def all_posted() -> bool:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM top_up WHERE seq > %s", (mark,))
            return cur.fetchone()[0] >= n
    load = bench.load.run(api_url + "/v1/topups", script="topups",
                          args=[",".join(keys), run], connections=connections,
                          duration_s=seconds, limit=n, delay_ms=delay_ms,
                          request_factory=topup_request(keys, run),
                          stop_when=all_posted if n else None)
    with conn.cursor() as cur:
        # requests still in flight when the load stopped: wait until the count holds still
        created = -1
        while True:
            cur.execute("SELECT count(*) FROM top_up WHERE seq > %s", (mark,))
            now_created = cur.fetchone()[0]
            if now_created == created:
                break
            created = now_created
            time.sleep(0.3)

        def settled():
            cur.execute("""
                SELECT count(*) FILTER (WHERE status <> 'pending'),
                       count(*) FILTER (WHERE status = 'succeeded')
                  FROM top_up WHERE seq > %s""", (mark,))
            done, succeeded = cur.fetchone()
            if done < created:
                return False
            if webhooks:
                cur.execute("""
                    SELECT count(*) FROM webhook_delivery d JOIN event e ON e.id = d.event_id
                      JOIN top_up t ON t.id = e.topup_id
                     WHERE t.seq > %s AND d.status = 'delivered'""", (mark,))
                return cur.fetchone()[0] >= succeeded
            return True
        complete = True
        try:
            wait_until(settled, timeout=180, interval=0.05, message="the top-ups to settle")
        except TimeoutError:
            complete = False
        cur.execute("""
            SELECT count(le.id),
                   extract(epoch FROM max(le.created_at) - min(t.created_at)),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY
                       extract(epoch FROM le.created_at - t.created_at)),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY
                       extract(epoch FROM le.created_at - t.created_at)),
                   count(*) FILTER (WHERE t.status = 'failed'),
                   count(*) FILTER (WHERE t.status = 'pending')
              FROM top_up t LEFT JOIN ledger_entry le ON le.topup_id = t.id
             WHERE t.seq > %s""", (mark,))
        credited, span, p50, p99, failed, pending = cur.fetchone()
        hooks = {}
        if webhooks:
            cur.execute("""
                SELECT count(*), extract(epoch FROM max(d.delivered_at) - min(t.created_at)),
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY
                           extract(epoch FROM d.delivered_at - t.created_at)),
                       percentile_cont(0.99) WITHIN GROUP (ORDER BY
                           extract(epoch FROM d.delivered_at - t.created_at))
                  FROM webhook_delivery d JOIN event e ON e.id = d.event_id
                  JOIN top_up t ON t.id = e.topup_id
                 WHERE t.seq > %s AND d.status = 'delivered'""", (mark,))
            delivered, hook_span, h50, h99 = cur.fetchone()
            hooks = {"delivered": delivered,
                     "delivered_per_s": round(delivered / float(hook_span), 1)
                     if hook_span else None,
                     "latency_ms": {"p50": _ms(h50), "p99": _ms(h99)}}
        cur.execute("SELECT count(*) FROM callback c JOIN top_up t "
                    "ON t.checkout_request_id = c.checkout_request_id "
                    "WHERE t.seq > %s AND c.outcome = 'orphan'", (mark,))
        early = cur.fetchone()[0]
    return {"posted": created, "credited": credited, "failed": failed, "pending": pending,
            "complete": complete, "offered_per_s": round(rate, 1) if rate else None,
            "load": load, "span_s": round(float(span or 0), 2),
            "topups_per_s": round(credited / float(span), 1) if span and credited else None,
            "credit_latency_ms": {"p50": _ms(p50), "p99": _ms(p99)},
            "webhooks": hooks,
            # a callback applied before the worker recorded the push's CheckoutRequestID is
            # first kept as an orphan, then re-applied: the simulator calls back at once
            "callbacks_first_kept_as_orphans": early}


def _ms(seconds) -> float | None:
    return round(float(seconds) * 1000, 1) if seconds is not None else None


def _noop(bench: Bench, processes: int) -> dict:
    """Dramatiq alone: M no-op messages drained by the same processes and threads."""
    import dramatiq
    import redis as redis_lib
    from dramatiq.brokers.redis import RedisBroker

    from bench.noop import QUEUE
    stack = bench.stack
    stack.flush_redis()
    m = 1500 if bench.quick else 6000
    broker = RedisBroker(url=stack.redis_url())
    broker.declare_queue(QUEUE)
    for i in range(m):
        broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="noop", args=(i,),
                                        kwargs={}, options={}))
    client = redis_lib.Redis.from_url(stack.redis_url())
    key = f"dramatiq:{QUEUE}.msgs"
    meter = bench.meter()
    stack.start_workers("noop-workers", stack.env("sqlite:///unused"), processes=processes,
                        threads=THREADS, module="bench.noop")
    try:
        wait_until(lambda: client.hlen(key) < m, timeout=60, interval=0.005,
                   message="the first no-op message")
        with meter:   # from the first message on: the processes' start is not counted
            started = time.monotonic()
            left = client.hlen(key)
            wait_until(lambda: client.hlen(key) == 0, timeout=120, interval=0.005,
                       message="the no-op messages")
            elapsed = time.monotonic() - started
    finally:
        stack.stop("noop-workers")
    broker.close()
    return {"messages": left, "seconds": round(elapsed, 2),
            "messages_per_s": round(left / elapsed, 1) if elapsed else None,
            "cpu_ms_per_message": {role: round(sec * 1000 / max(1, left), 3)
                                   for role, sec in meter.by_role.items() if sec > 0.005},
            "machine": meter.summary()}
