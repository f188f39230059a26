"""The statements one top-up sends to PostgreSQL, from request to credit, by process.

The real API and one worker process (one thread) run against a database whose sessions log
every statement; each process names itself with ``PGAPPNAME``, which the server's log line
carries. One top-up warms everything up, the next is counted. The simulator calls back after
0.2 s here, so that the callback follows the push's answer (the canonical path).
"""
from __future__ import annotations

import re
import time

from bench.end_to_end import _burst, has_webhooks, stack_python
from bench.harness import Bench
from bench.stack import find_free_port, wait_until

LINE = re.compile(r"^\S+ \S+ \S+ \[(\d+)\] (\w*): ?LOG:  statement: (.*)$")


def run(bench: Bench) -> dict:
    stack = bench.stack
    url = stack.new_database("census")
    _, keys, _ = bench.account(url, "census", keys=1)
    webhooks = has_webhooks()
    admin = stack.pg(url)
    with admin.cursor() as cur:
        cur.execute("ALTER SYSTEM SET log_line_prefix = '%m [%p] %a: '")
        cur.execute("SELECT pg_reload_conf()")
        cur.execute(f"ALTER DATABASE {url.rsplit('/', 1)[1]} SET log_statement = 'all'")
    base_env = stack.env(url, WEBHOOK_ALLOW_PRIVATE=1 if webhooks else 0)
    stack.flush_redis()
    stack.reset_simulator(callback_delay_s=0.2)
    _, api_url = stack.start_api("census-api", {**base_env, "PGAPPNAME": "api"})
    stack.start_workers("census-workers", {**base_env, "PGAPPNAME": "workers",
                                           "PUBLIC_BASE_URL": api_url}, processes=1, threads=1)
    if webhooks:
        import requests
        port = find_free_port()
        stack.spawn("census-receiver", [stack_python(), "-m", "bench.receiver", str(port)],
                    env=base_env, role="webhook receiver")
        wait_until(lambda: stack._answers(f"http://127.0.0.1:{port}/count"), timeout=10,
                   message="the webhook receiver")
        requests.post(api_url + "/v1/webhook_endpoints", timeout=10,
                      headers={"Authorization": f"Bearer {keys[0]}"},
                      json={"url": f"http://127.0.0.1:{port}/hooks", "events": ["wallet.top_up"]})
    conn = stack.pg(url)
    with conn.cursor() as cur:
        cur.execute("SET log_statement = 'none'")  # the harness's own polling stays out
    log_path = stack.postgres.log_path
    try:
        _burst(bench, conn, api_url, keys, 1, connections=1, webhooks=webhooks)
        offset = log_path.stat().st_size
        _burst(bench, conn, api_url, keys, 1, connections=1, webhooks=webhooks)
        time.sleep(0.5)   # the server's log is written asynchronously
        with open(log_path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
    finally:
        conn.close()
        for name in ("census-workers", "census-api", "census-receiver"):
            stack.stop(name)
        with admin.cursor() as cur:
            cur.execute(f"ALTER DATABASE {url.rsplit('/', 1)[1]} RESET log_statement")
            cur.execute("ALTER SYSTEM RESET log_line_prefix")
            cur.execute("SELECT pg_reload_conf()")
        admin.close()
        stack.reset_simulator()

    statements = []
    for line in text.splitlines():
        match = LINE.match(line)
        if match and match.group(2) in ("api", "workers"):
            statements.append([match.group(2), _shape(match.group(3))])
        elif statements and line.startswith(("\t", " ")):
            statements[-1][1] += " " + line.strip()
    by_process = {}
    for process, sql in statements:
        kind = sql.split()[0].upper() if sql else "?"
        if sql.strip().upper() in ("SELECT 1", "SELECT N"):
            kind = "SELECT 1 (pool check)"
        by_process.setdefault(process, {}).setdefault(kind, 0)
        by_process[process][kind] += 1
    return {"title": "Statements per top-up", "statements": statements,
            "total": len(statements), "by_process": by_process, "webhooks": webhooks}


def _shape(sql: str) -> str:
    """The statement without its literal values, short enough for a table."""
    sql = re.sub(r"'(?:[^']|'')*'", "'…'", sql)
    sql = re.sub(r"\b\d+(\.\d+)?\b", "N", sql)
    sql = re.sub(r"\s+", " ", sql).strip()
    return sql if len(sql) <= 140 else sql[:137] + "…"
