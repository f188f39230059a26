"""Callback acknowledgement: Daraja's callback endpoint under gunicorn, loaded by wrk with
realistic paid-callback bodies (each with its own CheckoutRequestID) over 16 connections,
against a trivial Flask endpoint that parses the same JSON and answers, under the same
gunicorn settings.

The two endpoints run back to back, pair after pair; each floor is the median of the pairs'
ratios (one run of either side is luck on a shared machine: a disk stall of other people's
makes a 4-second run's p99). The workers are not running meanwhile: the acknowledgement
(store durably, enqueue, answer) is what is measured, and the queued messages are thrown
away afterwards.
"""
from __future__ import annotations

import statistics

from bench.harness import CALLBACK_TOKEN, Bench
from bench.load import callback_request
from bench.stack import API_THREADS, API_WORKERS

CONNECTIONS = 16
# quick mode: True. Five in a full run: gunicorn hands each kept-alive connection to the
# worker process that accepted it, and now and then one process takes most of wrk's 16,
# which halves that run's rate on either side (per-process CPU: 0.01 s against 3.3 s)
PAIRS = {True: 2, False: 5}
SECONDS = {True: 3, False: 4}
THROUGHPUT_FLOOR = 0.3
P99_CEILING = 3.0


def run(bench: Bench) -> dict:
    stack = bench.stack
    url = stack.new_database("ack")
    env = stack.env(url)
    seconds = SECONDS[bench.quick]
    servers = {
        "trivial": stack.start_api("ack-trivial", env, app="bench.trivial_app:create_app()"),
        "callback": stack.start_api("ack-callback", env),
    }
    path = f"/daraja/callback/{CALLBACK_TOKEN}"
    pairs = []
    try:
        for name, (_, base) in servers.items():  # warm-up: connections, imports, the pool
            bench.load.run(base + path, script="callback", args=[f"W{name[0]}"],
                           connections=4, duration_s=1,
                           request_factory=callback_request(f"W{name[0]}"))
        for _pair in range(PAIRS[bench.quick]):
            pair = {}
            for name, (_, base) in servers.items():
                tag = f"{name[0].upper()}{bench.run_number() % 10}"
                with bench.machine() as machine:
                    result = bench.load.run(base + path, script="callback", args=[tag],
                                            connections=CONNECTIONS, duration_s=seconds,
                                            request_factory=callback_request(tag))
                result["machine"] = machine.summary()
                pair[name] = result
            if pair["trivial"]["rps"] and pair["callback"]["rps"]:
                pair["rps_ratio"] = round(pair["callback"]["rps"] / pair["trivial"]["rps"], 3)
                pair["p99_ratio"] = round(pair["callback"]["p99_ms"]
                                          / pair["trivial"]["p99_ms"], 3)
            pairs.append(pair)
    finally:
        for name in ("ack-trivial", "ack-callback"):
            stack.stop(name)
        stack.flush_redis()

    measured = [p for p in pairs if "rps_ratio" in p]
    rps_ratio = statistics.median(p["rps_ratio"] for p in measured)
    p99_ratio = statistics.median(p["p99_ratio"] for p in measured)
    errors = [p[name]["errors"] for p in pairs for name in ("trivial", "callback")
              if p[name]["errors"]]
    return {
        "title": "Callback acknowledgement",
        "settings": {"gunicorn": f"--workers {API_WORKERS} --threads {API_THREADS}",
                     "connections": CONNECTIONS, "pairs": len(pairs),
                     "seconds_per_run": seconds, "generator": bench.load.generator},
        "pairs": pairs,
        "errors": errors,
        "headline": {"rps_ratio": round(rps_ratio, 3), "p99_ratio": round(p99_ratio, 3)},
        "floors": [
            {"id": "ack_throughput",
             "measure": f"callback acknowledgement vs the trivial Flask endpoint, "
                        f"{CONNECTIONS} connections: throughput (median of {len(measured)} "
                        "pairs)",
             "floor": f"≥ {THROUGHPUT_FLOOR}×", "figure": round(rps_ratio, 3),
             "met": rps_ratio >= THROUGHPUT_FLOOR and not errors},
            {"id": "ack_p99",
             "measure": f"callback acknowledgement vs the trivial Flask endpoint, "
                        f"{CONNECTIONS} connections: p99 latency (median of {len(measured)} "
                        "pairs)",
             "floor": f"≤ {P99_CEILING}×", "figure": round(p99_ratio, 3),
             "met": p99_ratio <= P99_CEILING and not errors},
        ],
    }
