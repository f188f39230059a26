"""CPU per unit of work, measured in this process one unit at a time: the Python that the
API runs for a callback acknowledgement and a top-up request, and that a worker runs for a
credit, with a CPU-time profile (cProfile on ``time.process_time``) of where it goes.

Process CPU time counts this process only, so other people's load on the machine hardly
moves these figures: they are the steadiest in the report. What they leave out is the
servers' own work (gunicorn, Dramatiq's fetch and ack, PostgreSQL, Redis), measured by the
CPU-by-process columns of the other sections.
"""
from __future__ import annotations

import cProfile
import pstats
import time
from collections import Counter

from bench.harness import CALLBACK_TOKEN, Bench
from bench.load import callback_request, topup_request
from bench.profile import ROOT

GROUPS = [
    ("PostgreSQL client (psycopg2, in C)", ("psycopg2",)),
    ("peewee (SQL building, pool, rows)", ("peewee.py", "playhouse")),
    ("Flask, Werkzeug", ("/flask/", "/werkzeug/")),
    ("rate limiting", ("flask_limiter", "/limits/")),
    ("Dramatiq (message, enqueue)", ("/dramatiq/",)),
    ("redis-py", ("/redis/",)),
    ("metrics", ("prometheus_client",)),
    ("logging", ("/logging/", "pythonjsonlogger")),
    ("json", ("/json/", "_json")),
    ("our code", (f"{ROOT}/",)),
]


def _group(filename: str, name: str) -> str:
    where = f"{filename} {name}"
    library = "/site-packages/" in where
    for label, needles in GROUPS:
        if any(n in where for n in needles) and not (label == "our code" and library):
            return label
    return "other (stdlib, builtins)"


def _measure(fn, k: int) -> dict:
    for i in range(min(10, k)):           # warm-up: imports, caches, pooled connections
        fn(i)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(10, k):
        fn(i)
    n = k - 10
    cpu = (time.process_time() - cpu0) / n * 1000
    wall = (time.perf_counter() - wall0) / n * 1000
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for i in range(k, k + n // 2):
        fn(i)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(entry[2] for entry in stats.values()) or 1e-9
    groups, functions = Counter(), Counter()
    for (filename, line, name), entry in stats.items():
        tottime = entry[2]
        groups[_group(filename, name)] += tottime
        short = filename.split("/site-packages/")[-1].replace(f"{ROOT}/", "")
        functions[f"{name} ({short})"] += tottime
    share = lambda c, top: [[k, round(v / total, 3)] for k, v in c.most_common(top)]  # noqa
    return {"units": n, "cpu_ms": round(cpu, 3), "wall_ms": round(wall, 3),
            "groups": share(groups, 10), "functions": share(functions, 10)}


def run(bench: Bench) -> dict:
    import settings as settings_module
    from app import create_app
    from ledger import db

    stack = bench.stack
    url = stack.new_database("cpu")
    account_id, keys, _ = bench.account(url, "cpu", keys=8)
    env = stack.env(url)
    settings = settings_module.load(env)
    k = 150 if bench.quick else 400
    app = create_app({"SETTINGS": settings})
    client = app.test_client()
    units = {}

    callbacks = callback_request("CP")
    path = f"/daraja/callback/{CALLBACK_TOKEN}"
    units["callback acknowledgement (API)"] = _measure(
        lambda i: _ok(client.post(path, data=callbacks(1, i)[0],
                                  content_type="application/json")), 2 * k)

    run_number = bench.run_number()
    requests_ = topup_request(keys, run_number)

    def post_topup(i):
        body, headers = requests_(1, i)
        _ok(client.post("/v1/topups", data=body, headers=headers,
                        content_type="application/json"))
    units["POST /v1/topups (API)"] = _measure(post_topup, 2 * k)

    import workers  # noqa: F401  (what a worker process has: settings, broker, runtime)
    from workers import runtime, tasks
    seqs = bench.pending_topups_with_callbacks(url, account_id, 2 * k, "cpu")
    db.bind(url)
    redis = runtime.get().redis

    def credit(i):
        with db.connection():
            outcome = tasks.apply_callback(seqs[i], redis=redis)
        if outcome != "credited":
            raise RuntimeError(f"credit {seqs[i]}: {outcome}")
    units["credit (worker task)"] = _measure(credit, k)
    stack.flush_redis()
    return {"title": "CPU per unit of work", "units": units, "repetitions": k}


def _ok(response):
    if response.status_code >= 300:
        raise RuntimeError(f"{response.status_code}: {response.get_data(as_text=True)[:300]}")
    return response
