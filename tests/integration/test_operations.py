"""Running it for real: queue inspection, support look-ups, metrics, JSON logs and graceful
shutdown, on a real redis-server and PostgreSQL with gunicorn and ``dramatiq workers`` as real
processes and the Daraja simulator in the test process."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import dramatiq
import pytest
import requests
from dramatiq.brokers.redis import RedisBroker
from prometheus_client.parser import text_string_to_metric_families

from ledger import db, inbox, pushes, topups
from ledger.models import Callback, LedgerEntry, TopUp
from tests.integration.system import BIN, sim_call
from tests.messages import taken
from tests.waiting import wait_until
from topupctl.devservers import find_free_port
from tests.unit.test_crediting import success_body
from tests.webhook_receiver import Receiver

OPS_TOKEN = "ops-token-integration-0123456789"


@pytest.fixture
def ops_system(pg_system):
    pg_system.worker_metrics_port = find_free_port()
    pg_system.env.update({
        "OPS_TOKEN": OPS_TOKEN,
        "WORKER_METRICS_PORT": str(pg_system.worker_metrics_port),
        "STK_QUERY_AFTER_S": "2",
        "STK_QUERY_BACKOFF_S": "0.5",
        "WEBHOOK_ALLOW_PRIVATE": "1",
    })
    return pg_system


def topupctl(system, *args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([os.path.join(BIN, "topupctl"), *args], env=system.env,
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def ops_get(system, path):
    return requests.get(system.api_url + path, timeout=10,
                        headers={"Authorization": f"Bearer {OPS_TOKEN}"})


def samples(text: str) -> dict:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(found: dict, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    return sum(value for (sample, sample_labels), value in found.items()
               if sample == name and labels.items() <= dict(sample_labels).items())


def pushed_topup(account_id: str, n: int, checkout: str):
    topup, _ = topups.create_topup(account_id, amount=100 + n, phone=f"25471234{n:04d}",
                                   reference=None, metadata={})
    pushes.claim_push(topup.id)
    pushes.record_push_accepted(topup.id, checkout_request_id=checkout,
                                merchant_request_id=f"m-{n}", query_after_s=3600)
    return topup


def queued(redis_url: str, queue: str) -> list[tuple]:
    """The messages a worker would now take from ``queue``: (actor, arguments) each."""
    broker = RedisBroker(url=redis_url)
    try:
        return [(m.actor_name, list(m.args)) for m in taken(broker, queue)]
    finally:
        broker.close()


def read_by_the_server(connection: socket.socket) -> bool:
    """Whether the server has accepted ``connection`` and read all that was sent on it
    (Linux's /proc/net/tcp: the server's end of a connection has an inode once accepted,
    and an empty receive queue once read)."""
    here, there = connection.getsockname(), connection.getpeername()
    ours = (f"0100007F:{there[1]:04X}", f"0100007F:{here[1]:04X}")   # 127.0.0.1, as Linux
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == ours:
            receive_queue = int(fields[4].split(":")[1], 16)
            return fields[9] != "0" and receive_queue == 0
    return False


def fetch(consumer, count: int) -> list:
    got = []
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            got.append(message)
    assert len(got) == count
    return got


# --- queue inspection ------------------------------------------------------------------------

def test_counts_of_a_thousand_messages_and_five_dead_letters_match_redis_and_requeued_ones_run(
        ops_system, redis_server):
    producer = RedisBroker(url=redis_server.url)
    push = dramatiq.actor(lambda topup_id: None, actor_name="push_topup", queue_name="topups",
                          broker=producer)
    apply = dramatiq.actor(lambda seq: None, actor_name="apply_callback",
                           queue_name="callbacks", broker=producer)
    query = dramatiq.actor(lambda topup_id: None, actor_name="query_topup",
                           queue_name="queries", broker=producer)

    # Five real callbacks, stored and never applied: their messages die first.
    account_id, _ = ops_system.create_account()
    with db.connection():
        dead = [pushed_topup(account_id, n, f"ws_CO_DEAD_{n}") for n in range(5)]
        seqs = [inbox.store_callback(success_body(f"ws_CO_DEAD_{n}", amount=100 + n,
                                                  receipt=f"DEAD00000{n}"), "127.0.0.1")[0].seq
                for n in range(5)]
    for seq in seqs:
        apply.send(seq)
    dying = producer.consume("callbacks", prefetch=5)
    for message in fetch(dying, 5):
        dying.nack(message)

    # A thousand more: 650 pushes (50 of them fetched by a worker that has not acked them),
    # 150 callbacks, 200 queries delayed by an hour.
    for n in range(650):
        push.send(f"tu_nothing_{n}")
    for n in range(150):
        apply.send(1_000_000 + n)
    for n in range(200):
        query.send_with_options(args=(f"tu_later_{n}",), delay=3_600_000)
    holder = producer.consume("topups", prefetch=50)
    fetch(holder, 1)  # one fetch takes 50 from Redis

    queues = {q["queue"]: q for q in json.loads(topupctl(ops_system, "queues", "--json").stdout)
              ["data"]}
    shape = {name: (q["ready"], q["delayed"], q["in_progress"], q["dead"])
             for name, q in queues.items()}
    assert shape["topups"] == (600, 0, 50, 0)
    assert shape["callbacks"] == (150, 0, 0, 5)
    assert shape["queries"] == (0, 200, 0, 0)
    assert sum(r + d + i for r, d, i, _ in shape.values()) == 1000
    assert queues["topups"]["by_actor"] == {
        "push_topup": {"ready": 600, "delayed": 0, "in_progress": 50, "dead": 0}}
    assert queues["callbacks"]["by_actor"]["apply_callback"]["dead"] == 5

    ops_system.start_api()
    answer = {q["queue"]: q for q in ops_get(ops_system, "/ops/queues").json()["data"]}
    assert {name: (q["ready"], q["delayed"], q["in_progress"], q["dead"])
            for name, q in answer.items()} == shape

    listing = topupctl(ops_system, "queues", "dead", "--queue", "callbacks").stdout
    assert sum("apply_callback(" in line for line in listing.splitlines()) == 5
    requeued = topupctl(ops_system, "queues", "dead", "--queue", "callbacks", "--requeue")
    assert "requeued 5 dead letters" in requeued.stdout

    ops_system.start_workers(processes=1, threads=4)

    def credited():
        with db.connection():
            return TopUp.select().where(TopUp.id.in_([t.id for t in dead])
                                        & (TopUp.status == "succeeded")).count() == 5
    wait_until(credited, timeout=90, message="the requeued callbacks to credit their top-ups")
    with db.connection():
        assert LedgerEntry.select().count() == 5
    after = {q["queue"]: q for q in json.loads(topupctl(ops_system, "queues", "--json").stdout)
             ["data"]}
    assert after["callbacks"]["dead"] == 0


# --- support look-up -------------------------------------------------------------------------

def test_topups_show_prints_the_same_whole_history_for_each_kind_of_key(ops_system, simulator):
    ops_system.start_api()
    ops_system.start_workers(processes=1, threads=4)
    _, key = ops_system.create_account()
    receiver = Receiver().start()
    try:
        created = requests.post(ops_system.api_url + "/v1/webhook_endpoints", timeout=10,
                                headers={"Authorization": f"Bearer {key}"},
                                json={"url": receiver.url, "events": ["wallet.top_up"]})
        assert created.status_code == 201, created.text
        receiver.secret = created.json()["secret"]
        topup = ops_system.topup(key, 250, "0708 374 149", reference="TICKET1")
        wait_until(lambda: receiver.verified, timeout=60, message="the webhook delivery")
    finally:
        receiver.stop()
    done = ops_system.get(key, f"/v1/topups/{topup['id']}")
    assert done["status"] == "succeeded"

    keys = [topup["id"], done["checkout_request_id"], done["mpesa_receipt"], "0708374149"]
    outputs = [topupctl(ops_system, "topups", "show", k).stdout for k in keys]
    assert len(set(outputs)) == 1, outputs
    documents = [json.loads(topupctl(ops_system, "topups", "show", k, "--json").stdout)
                 for k in keys]
    assert [d["matched_by"] for d in documents] == ["id", "checkout_request_id",
                                                    "mpesa_receipt", "phone"]
    assert len({json.dumps(d["history"]) for d in documents}) == 1
    kinds = [step["kind"] for step in documents[0]["history"]]
    for kind in ("requested", "push_accepted", "callback", "ledger_entry", "credited",
                 "event", "webhook_attempt"):
        assert kind in kinds, kinds
    assert kinds.index("requested") < kinds.index("push_accepted") < kinds.index("callback") \
        < kinds.index("ledger_entry") < kinds.index("webhook_attempt")
    [attempt] = [s["detail"] for s in documents[0]["history"] if s["kind"] == "webhook_attempt"]
    assert 200 <= attempt["status_code"] < 300
    assert "2547****4149" in outputs[0] and "708374149" not in outputs[0]


# --- metrics and logs ------------------------------------------------------------------------

def test_metrics_after_a_run_of_topups_equal_what_happened_and_logs_are_json(ops_system,
                                                                             simulator):
    ops_system.start_api(workers=2, threads=4)
    ops_system.start_workers(processes=2, threads=4)
    ops_system.start_scheduler(interval=1)   # the first STK query of the one never called back
    _, key = ops_system.create_account()
    receiver = Receiver().start()
    try:
        created = requests.post(ops_system.api_url + "/v1/webhook_endpoints", timeout=10,
                                headers={"Authorization": f"Bearer {key}"},
                                json={"url": receiver.url,
                                      "events": ["wallet.top_up", "topup.failed"]})
        receiver.secret = created.json()["secret"]
        phones = ([f"0712 34{n:04d}" for n in range(6)]   # paid, called back
                  + ["0700 001032", "0700 001031"]         # cancelled by the customer
                  + ["0700 020001"]                        # refused at the push
                  + ["0700 010001"])                       # paid, never called back: queried
        made = [ops_system.topup(key, 10 + n, phone) for n, phone in enumerate(phones)]

        def settled():
            return all(ops_system.get(key, f"/v1/topups/{t['id']}")["status"] != "pending"
                       for t in made)
        wait_until(settled, timeout=120, message="every top-up to settle")
        wait_until(lambda: len(receiver.verified) == 10, timeout=60,
                   message="ten webhook deliveries")
    finally:
        receiver.stop()
    statuses = [ops_system.get(key, f"/v1/topups/{t['id']}")["status"] for t in made]
    assert statuses == ["succeeded"] * 6 + ["failed"] * 3 + ["succeeded"]

    def scrape(url):
        response = requests.get(url, timeout=10)
        assert response.status_code == 200
        return samples(response.text)

    worker_url = f"http://127.0.0.1:{ops_system.worker_metrics_port}/metrics"

    def queues_idle():
        found = scrape(ops_system.api_url + "/metrics")
        return total(found, "topup_queue_messages") == 0 and found
    api = wait_until(queues_idle, timeout=60, message="the queues to empty")
    workers = scrape(worker_url)
    stats = sim_call(simulator, "GET", "/__sim/stats")
    with db.connection():
        callbacks = Callback.select().count()
        by_source = {s: LedgerEntry.select().where(LedgerEntry.source == s).count()
                     for s in ("callback", "query")}

    # what the ledger says
    assert api[("topup_topups", (("status", "succeeded"),))] == 7
    assert api[("topup_topups", (("status", "failed"),))] == 3
    assert api[("topup_topups", (("status", "pending"),))] == 0
    # what Daraja (the simulator) saw, call for call
    assert total(workers, "topup_daraja_calls_total", endpoint="oauth") == stats["oauth"] == 1
    assert total(workers, "topup_daraja_calls_total", endpoint="stkpush") == stats["stkpush"] == 10
    assert total(workers, "topup_daraja_calls_total", endpoint="stkpush", outcome="ok") == 9
    assert total(workers, "topup_daraja_calls_total", endpoint="stkpush",
                 outcome="rejected") == 1
    assert total(workers, "topup_daraja_calls_total", endpoint="stkquery") == stats["stkquery"]
    assert total(workers, "topup_daraja_call_duration_seconds_count", endpoint="stkpush") == 10
    # every callback acknowledged, every credit timed
    assert total(api, "topup_callback_ack_duration_seconds_count", status="200") == callbacks == 8
    assert total(workers, "topup_credit_latency_seconds_count", source="callback") == \
        by_source["callback"] == 6
    assert total(workers, "topup_credit_latency_seconds_count", source="query") == \
        by_source["query"] == 1
    # webhooks: ten events, each delivered at the first attempt
    assert api[("topup_webhook_deliveries", (("status", "delivered"),))] == 10
    assert api[("topup_webhook_attempts", (("outcome", "success"),))] == 10
    assert total(workers, "topup_worker_messages_total", actor="push_topup", outcome="ok") == 10
    assert api[("topup_metrics_source_up", (("source", "redis"),))] == 1

    # The processes' logs: one JSON object a line, but for the few lines the masters write
    # before any of our code runs in them (gunicorn's arbiter, dramatiq's main process).
    api_master = f"[{ops_system.processes['api'].pid}]"
    before_our_code = {"api": lambda line: api_master in line or "Booting worker" in line,
                       "workers": lambda line: "[dramatiq.MainProcess]" in line}
    ops_system.stop_process("api")  # its workers log their exit
    for name, allowed in before_our_code.items():
        lines = [line for line in ops_system.log(name).splitlines() if line.strip()]
        parsed = [json.loads(line) for line in lines if line.startswith("{")]
        assert parsed, name
        assert all(allowed(line) for line in lines if not line.startswith("{")), name
        assert {line["service"] for line in parsed} == {name}
    worker_lines = [json.loads(line) for line in ops_system.log("workers").splitlines()
                    if line.startswith("{")]
    accepted = [line for line in worker_lines if line["message"] == "push accepted"]
    assert len(accepted) == 9
    assert all(line["topup_id"].startswith("tu_") and line["checkout_request_id"]
               for line in accepted)
    applied = [line for line in worker_lines if line["message"] == "callback applied"]
    assert applied and all(line.get("topup_id") and line.get("checkout_request_id")
                           for line in applied)


# --- graceful shutdown -----------------------------------------------------------------------

def test_sigterm_to_the_api_finishes_the_request_in_flight(ops_system, redis_server):
    ops_system.start_api(workers=1, threads=2)
    _, key = ops_system.create_account()
    body = json.dumps({"provider": "mpesa", "amount": 77, "phone": "0708374149"}).encode()
    head = (f"POST /v1/topups HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode()
    connection = socket.create_connection(("127.0.0.1", ops_system.api_port), timeout=30)
    try:
        connection.sendall(head + body[:10])
        wait_until(lambda: read_by_the_server(connection),
                   message="the request to be in a worker's hands, half read")
        master = ops_system.processes["api"]
        master.send_signal(signal.SIGTERM)
        wait_until(lambda: "Handling signal: term" in ops_system.log("api"),
                   message="the API to begin shutting down")
        connection.sendall(body[10:])
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    finally:
        connection.close()
    assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
    created = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert master.wait(timeout=30) == 0
    with db.connection():
        assert TopUp.get(TopUp.id == created["id"]).amount == 77
    # and its push was handed to the workers before the API went away
    assert queued(redis_server.url, "topups") == [("push_topup", [created["id"]])]


def test_sigterm_to_the_workers_finishes_the_push_in_flight_and_returns_what_they_held(
        ops_system, simulator):
    sim_call(simulator, "POST", "/__sim/config", {"push_latency_s": 3})
    ops_system.start_api()
    _, key = ops_system.create_account()
    made = [ops_system.topup(key, 20 + n, f"0712 55{n:04d}") for n in range(6)]
    workers = ops_system.start_workers(processes=1, threads=1)

    def sending():
        with db.connection():
            return TopUp.select().where(TopUp.push_state == "sending").first()
    in_flight = wait_until(sending, timeout=60, message="a push to be in flight")
    workers.send_signal(signal.SIGTERM)  # to the master alone, as `docker stop` does
    assert workers.wait(timeout=60) == 0
    with db.connection():
        assert TopUp.get(TopUp.id == in_flight.id).push_state == "sent"
        states = [TopUp.get(TopUp.id == t["id"]).push_state for t in made]
    assert "sending" not in states

    [topups_queue] = [q for q in json.loads(topupctl(ops_system, "queues", "--json").stdout)
                      ["data"] if q["queue"] == "topups"]
    assert topups_queue["in_progress"] == 0
    assert topups_queue["ready"] == states.count("queued")

    sim_call(simulator, "POST", "/__sim/config", {"push_latency_s": 0})
    ops_system.start_workers(processes=1, threads=4, name="workers-again")

    def statuses():
        return {ops_system.get(key, f"/v1/topups/{t['id']}")["status"] for t in made}
    wait_until(lambda: "pending" not in statuses(), timeout=90,
               message="every top-up to settle")
    assert statuses() == {"succeeded"}
