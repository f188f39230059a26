"""1. Callback acknowledgement: Daraja's callback endpoint under gunicorn, loaded by wrk with
realistic paid-callback bodies (each with its own CheckoutRequestID), against a trivial Flask
endpoint that parses the same JSON and answers, under the same gunicorn settings.

The workers are not running meanwhile: the acknowledgement (store durably, enqueue, answer)
is what is measured, and the queued messages are thrown away afterwards.
"""
from __future__ import annotations

from bench.harness import CALLBACK_TOKEN, Bench
from bench.load import callback_request
from bench.stack import API_THREADS, API_WORKERS

HEADLINE_CONNECTIONS = 16


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
        if not bench.quick:
            # the headline level once more: of its two runs, each endpoint's faster one counts
            # (other people's load only ever slows a run down)
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

    head = {name: max((r for r in rows if r["connections"] == HEADLINE_CONNECTIONS),
                      key=lambda r: r["rps"] or 0)
            for name, rows in curves.items()}
    rps_ratio = head["callback"]["rps"] / head["trivial"]["rps"]
    p99_ratio = head["callback"]["p99_ms"] / head["trivial"]["p99_ms"]
    return {
        "title": "Callback acknowledgement",
        "settings": {"gunicorn": f"--workers {API_WORKERS} --threads {API_THREADS}",
                     "connections": levels, "headline_connections": HEADLINE_CONNECTIONS,
                     "seconds_per_run": seconds, "generator": bench.load.generator},
        "curves": curves,
        "headline": {
            "callback_rps": head["callback"]["rps"], "trivial_rps": head["trivial"]["rps"],
            "rps_ratio": round(rps_ratio, 3),
            "callback_p50_ms": head["callback"]["p50_ms"],
            "trivial_p50_ms": head["trivial"]["p50_ms"],
            "callback_p99_ms": head["callback"]["p99_ms"],
            "trivial_p99_ms": head["trivial"]["p99_ms"],
            "p99_ratio": round(p99_ratio, 3),
        },
        "goals": [
            {"goal": "callback ACK throughput ≥ 0.5 × trivial endpoint's",
             "value": round(rps_ratio, 3), "target": 0.5, "met": rps_ratio >= 0.5},
            {"goal": "callback ACK p99 ≤ 2 × trivial endpoint's",
             "value": round(p99_ratio, 3), "target": 2.0, "met": p99_ratio <= 2.0},
        ],
        "profile": profile,
    }


def _cpu_ms(meter, requests: int) -> dict:
    if not requests:
        return {}
    return {role: round(seconds * 1000 / requests, 3)
            for role, seconds in meter.by_role.items() if seconds > 0.005}
