"""CPU per unit of work, measured in this process one unit at a time: the Python that the
API runs for a callback acknowledgement and a top-up request, and that a worker runs for a
push, a credit and a webhook delivery, with a CPU-time profile (cProfile on
``time.process_time``) of where it goes.

A worker unit is a message handled as a Dramatiq worker thread handles it
(``dramatiq.worker.WorkerThread.process_message``): the broker's middleware before it (ours
and Dramatiq's: the database connection, the log context, metrics), the actor, the
middleware after it, and the actor's log lines written as a worker writes them (JSON, at
INFO). What it leaves out is Dramatiq's fetch and ack (measured alone by the end-to-end
section's no-op runs).

Process CPU time counts this process only, so other people's load on the machine hardly
moves these figures: they are the steadiest in the report. What they leave out is the
servers' own work (gunicorn, Dramatiq's fetch and ack, PostgreSQL, Redis), measured by the
CPU-by-process columns of the other sections.
"""
from __future__ import annotations

import contextlib
import cProfile
import logging
import os
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
    ("our middleware", (f"{ROOT}/workers/observability.py", f"{ROOT}/workers/middleware.py")),
    ("our log lines", (f"{ROOT}/telemetry/logs.py", f"{ROOT}/telemetry/redact.py")),
    ("our code", (f"{ROOT}/",)),
]


def _group(filename: str, name: str) -> str:
    where = f"{filename} {name}"
    library = "/site-packages/" in where
    for label, needles in GROUPS:
        if any(n in where for n in needles) and not (label.startswith("our ") and library):
            return label
    return "other (stdlib, builtins)"


def _used(k: int) -> int:
    """How many units ``_measure(fn, k)`` runs: warm-up, measured, profiled."""
    return k + (k - 10) // 2


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
    from bench.end_to_end import stack_python
    from bench.stack import find_free_port, wait_until
    from bench.trivial_app import create_app as create_trivial_app
    from ledger import db, webhooks as ledger_webhooks
    from ledger.models import Callback, TopUp, WebhookDelivery

    stack = bench.stack
    url = stack.new_database("cpu")
    account_id, keys, _ = bench.account(url, "cpu", keys=8)
    settings = settings_module.load(stack.env(url, WEBHOOK_ALLOW_PRIVATE=1))
    k = 60 if bench.quick else 150
    units = {}

    callbacks = callback_request("CP")
    path = f"/daraja/callback/{CALLBACK_TOKEN}"
    trivial = create_trivial_app().test_client()
    units["trivial endpoint (baseline)"] = _measure(
        lambda i: _ok(trivial.post(path, data=callbacks(1, i)[0],
                                   content_type="application/json")), 2 * k)

    client = create_app({"SETTINGS": settings}).test_client()
    units["callback acknowledgement (API)"] = _measure(
        lambda i: _ok(client.post(path, data=callbacks(2, i)[0],
                                  content_type="application/json")), 2 * k)

    requests_ = topup_request(keys, bench.run_number())

    def post_topup(i):
        body, headers = requests_(1, i)
        _ok(client.post("/v1/topups", data=body, headers=headers,
                        content_type="application/json"))
    units["POST /v1/topups (API)"] = _measure(post_topup, 2 * k)

    import bootstrap
    from workers import actors, webhooks as worker_webhooks
    # what a worker process has: this database, the broker, the simulator, a Redis client
    bootstrap.configure("workers", settings)
    with db.connection():
        queued = [t.id for t in TopUp.select(TopUp.id).where(TopUp.push_state == "queued")
                  .order_by(TopUp.seq)]
    stack.reset_simulator(lock_subscriber=False)
    push = as_message(actors.push_topup)
    n_push = min(k, len(queued) * 2 // 3)
    with worker_log_lines():
        units["push (worker message)"] = _measure(lambda i: push(queued[i]), n_push)
    with db.connection():
        sent = TopUp.select().where(TopUp.id.in_(queued[:_used(n_push)])
                                    & (TopUp.push_state == "sent")).count()
    if sent < _used(n_push):
        raise RuntimeError(f"push: {sent} of {_used(n_push)} top-ups sent")

    port = find_free_port()
    stack.spawn("cpu-receiver", [stack_python(), "-m", "bench.receiver", str(port)],
                env=stack.env(url), role="webhook receiver")
    try:
        wait_until(lambda: stack._answers(f"http://127.0.0.1:{port}/count"), timeout=10,
                   message="the webhook receiver")
        with db.connection(), db.write_transaction():
            ledger_webhooks.create_endpoint(account_id, f"http://127.0.0.1:{port}/hooks",
                                            ["wallet.top_up"])
        seqs = bench.pending_topups_with_callbacks(url, account_id, 2 * k, "cpu")
        db.bind(url)
        credit = as_message(actors.apply_callback)
        with worker_log_lines():
            units["credit (worker message)"] = _measure(lambda i: credit(seqs[i]), k)
        with db.connection():
            credited = Callback.select().where(Callback.seq.in_(seqs[:_used(k)])
                                               & (Callback.outcome == "credited")).count()
            deliveries = [d.id for d in WebhookDelivery.select(WebhookDelivery.id)
                          .where(WebhookDelivery.status == "pending").order_by(WebhookDelivery.seq)]
        if credited < _used(k):
            raise RuntimeError(f"credit: {credited} of {_used(k)} callbacks credited")

        deliver = as_message(worker_webhooks.deliver_webhook)
        n_deliver = min(k, len(deliveries) * 2 // 3)
        with worker_log_lines():
            units["webhook delivery (worker message)"] = _measure(
                lambda i: deliver(deliveries[i]), n_deliver)
        with db.connection():
            delivered = WebhookDelivery.select().where(
                WebhookDelivery.id.in_(deliveries[:_used(n_deliver)])
                & (WebhookDelivery.status == "delivered")).count()
        if delivered < _used(n_deliver):
            raise RuntimeError(f"webhooks: {delivered} of {_used(n_deliver)} delivered")
    finally:
        stack.stop("cpu-receiver")
        stack.flush_redis()
        stack.reset_simulator()
    return {"title": "CPU per unit of work", "units": units, "repetitions": k}


def as_message(actor):
    """A function handling one message for ``actor`` as a Dramatiq worker thread does
    (``WorkerThread.process_message``, less the fetch and the ack): the broker's middleware
    before, the actor, the middleware after; an exception is stuffed into the message and
    handed to the middleware as well, then raised."""
    from dramatiq.broker import MessageProxy
    broker = actor.broker

    def handle(*args):
        message = MessageProxy(actor.message(*args))
        broker.emit_before("process_message", message)
        try:
            result = actor(*message.args, **message.kwargs)
        except BaseException as exc:
            message.stuff_exception(exc)
            broker.emit_after("process_message", message, exception=exc)
            message.clear_exception()
            raise
        broker.emit_after("process_message", message, result=result)
        return result
    return handle


@contextlib.contextmanager
def worker_log_lines():
    """Log lines written as a worker process writes them: JSON (the production formatter)
    at INFO, one ``write`` each, here to the null device."""
    from telemetry import logs
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    sink = open(os.devnull, "w", buffering=1, encoding="utf-8")
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logs.GatewayJsonFormatter("workers"))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        sink.close()


def _ok(response):
    # closed as a WSGI server closes it: what runs after the answer (the callback's enqueue)
    # is part of the unit's cost
    response.close()
    if response.status_code >= 300:
        raise RuntimeError(f"{response.status_code}: {response.get_data(as_text=True)[:300]}")
    return response
