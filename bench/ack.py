"""1. Callback acknowledgement: Daraja's callback endpoint under gunicorn, loaded by wrk with
realistic paid-callback bodies (each with its own CheckoutRequestID), against a trivial Flask
endpoint that parses the same JSON and answers, under the same gunicorn settings.

The workers are not running meanwhile: the acknowledgement (store durably, enqueue, answer)
is what is measured, and the queued messages are thrown away afterwards.
"""
from __future__ import annotations

import statistics

from bench.harness import CALLBACK_TOKEN, Bench
from bench.load import callback_request
from bench.stack import API_THREADS, API_WORKERS

HEADLINE_CONNECTIONS = 16
# runs of the two endpoints back to back at the headline level (quick mode: True)
HEADLINE_PAIRS = {True: 2, False: 3}


def run(bench: Bench) -> dict:
    stack = bench.stack
    url = stack.new_database("ack")
    env = stack.env(url)
    levels = [HEADLINE_CONNECTIONS] if bench.quick else [1, 4, HEADLINE_CONNECTIONS, 64]
    seconds = 3 if bench.quick else 4
    servers = {
        "trivial": stack.start_api("ack-trivial", env, app="bench.trivial_app:create_app()"),
        "callback": stack.start_api("ack-callback", env),
    }
    path = f"/daraja/callback/{CALLBACK_TOKEN}"
    curves = {"trivial": [], "callback": []}
    try:
        for name, (_, base) in servers.items():  # warm-up: connections, imports, the pool
            bench.load.run(base + path, script="callback", args=[f"W{name[0]}"],
                           connections=4, duration_s=1,
                           request_factory=callback_request(f"W{name[0]}"))
        for connections in levels:
            # the two endpoints back to back at each level, so that both see the same machine
            for name, (_, base) in servers.items():
                tag = f"{name[0].upper()}{bench.run_number() % 10}"
                with bench.meter() as meter:
                    result = bench.load.run(base + path, script="callback", args=[tag],
                                            connections=connections, duration_s=seconds,
                                            request_factory=callback_request(tag))
                result["machine"] = meter.summary()
                result["cpu_ms_per_request"] = _cpu_ms(meter, result["requests"])
                curves[name].append(result)
        # the headline level again, the two endpoints back to back each time: the ratios are
        # the median of these pairs' (one run of either side is luck on a shared machine: a
        # disk stall of other people's makes a 4-second run's p99)
        for _pair in range(HEADLINE_PAIRS[bench.quick] - 1):
            for name, (_, base) in servers.items():
                tag = f"{name[0].upper()}{bench.run_number() % 10}"
                with bench.meter() as meter:
                    result = bench.load.run(base + path, script="callback", args=[tag],
                                            connections=HEADLINE_CONNECTIONS,
                                            duration_s=seconds,
                                            request_factory=callback_request(tag))
                result["machine"] = meter.summary()
                result["cpu_ms_per_request"] = _cpu_ms(meter, result["requests"])
                result["repeat"] = True
                curves[name].append(result)
        profile = None
        spy = bench.spy(servers["callback"][0].pid, 4, "ack-callback")
        if spy:
            bench.load.run(servers["callback"][1] + path, script="callback", args=["PX"],
                           connections=HEADLINE_CONNECTIONS, duration_s=5,
                           request_factory=callback_request("PX"))
            profile = spy.wait()
    finally:
        for name in ("ack-trivial", "ack-callback"):
            stack.stop(name)
        stack.flush_redis()

    pairs = [{"trivial": t, "callback": c}
             for t, c in zip(curves["trivial"], curves["callback"])
             if t["connections"] == HEADLINE_CONNECTIONS and t["rps"] and c["rps"]]
    for pair in pairs:
        pair["rps_ratio"] = round(pair["callback"]["rps"] / pair["trivial"]["rps"], 3)
        pair["p99_ratio"] = round(pair["callback"]["p99_ms"] / pair["trivial"]["p99_ms"], 3)
    rps_ratio = statistics.median(p["rps_ratio"] for p in pairs)
    p99_ratio = statistics.median(p["p99_ratio"] for p in pairs)

    def median_of(name: str, key: str) -> float:
        return round(statistics.median(p[name][key] for p in pairs), 1)
    return {
        "title": "Callback acknowledgement",
        "settings": {"gunicorn": f"--workers {API_WORKERS} --threads {API_THREADS}",
                     "connections": levels, "headline_connections": HEADLINE_CONNECTIONS,
                     "seconds_per_run": seconds, "generator": bench.load.generator},
        "curves": curves,
        "headline": {
            # medians over the pairs, figure by figure; the ratios are the pairs' medians
            "pairs": len(pairs),
            "callback_rps": median_of("callback", "rps"),
            "trivial_rps": median_of("trivial", "rps"),
            "rps_ratio": round(rps_ratio, 3),
            "rps_ratios": [p["rps_ratio"] for p in pairs],
            "callback_p50_ms": median_of("callback", "p50_ms"),
            "trivial_p50_ms": median_of("trivial", "p50_ms"),
            "callback_p99_ms": median_of("callback", "p99_ms"),
            "trivial_p99_ms": median_of("trivial", "p99_ms"),
            "p99_ratio": round(p99_ratio, 3),
            "p99_ratios": [p["p99_ratio"] for p in pairs],
        },
        "goals": [
            {"goal": "callback ACK throughput ≥ 0.5 × trivial endpoint's "
                     f"(median of {len(pairs)} pairs)",
             "value": round(rps_ratio, 3), "target": 0.5, "met": rps_ratio >= 0.5},
            {"goal": "callback ACK p99 ≤ 2 × trivial endpoint's "
                     f"(median of {len(pairs)} pairs)",
             "value": round(p99_ratio, 3), "target": 2.0, "met": p99_ratio <= 2.0},
        ],
        "profile": profile,
    }


def _cpu_ms(meter, requests: int) -> dict:
    if not requests:
        return {}
    return {role: round(seconds * 1000 / requests, 3)
            for role, seconds in meter.by_role.items() if seconds > 0.005}
