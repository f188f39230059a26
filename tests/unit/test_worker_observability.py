"""The workers count what they do (Daraja calls, credits, messages) and name the top-up on
every line they log while handling a message about one."""
from __future__ import annotations

import dataclasses
import io
import json
import logging

import dramatiq
import fakeredis
import pytest

import bootstrap
from ledger import db, inbox, topups
from simulator.server import SimulatorConfig, SimulatorServer
from telemetry import logs, metrics
from tests.unit.test_crediting import pushed, success_body  # noqa: F401 (a fixture)
from workers import tasks

pytestmark = pytest.mark.both_databases


def count(metric, **labels) -> float:
    """What ``metric`` counted for ``labels`` (a counter's total, a histogram's count), from
    its samples as /metrics reads them: 0 before the first."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(("_total", "_count")) and sample.labels == labels:
                return sample.value
    return 0.0


@pytest.fixture
def simulator():
    sim = SimulatorServer(host="127.0.0.1", port=0, config=SimulatorConfig(callback_delay_s=30))
    sim.start()
    yield sim
    sim.stop()


def test_every_daraja_call_is_counted_by_endpoint_and_outcome(settings, simulator,
                                                              stub_broker):
    rt = bootstrap.configure("tests", dataclasses.replace(settings, daraja_base_url=simulator.url),
                             broker=stub_broker, redis=fakeredis.FakeRedis(), database=False,
                             logging=False)
    counted = metrics.instruments()
    before = {(e, o): count(counted.daraja_calls, endpoint=e, outcome=o)
              for e, o in [("oauth", "ok"), ("stkpush", "ok"), ("stkpush", "rejected")]}
    rt.daraja.stk_push(amount=10, phone="254708374149", account_reference="A1")
    with pytest.raises(Exception):
        rt.daraja.stk_push(amount=10, phone="254700020001", account_reference="A2")  # refused
    assert count(counted.daraja_calls, endpoint="oauth", outcome="ok") - \
        before[("oauth", "ok")] == 1
    assert count(counted.daraja_calls, endpoint="stkpush", outcome="ok") - \
        before[("stkpush", "ok")] == 1
    assert count(counted.daraja_calls, endpoint="stkpush", outcome="rejected") - \
        before[("stkpush", "rejected")] == 1
    assert count(counted.daraja_seconds, endpoint="stkpush", outcome="ok") >= 1


def test_a_credit_is_timed_from_push_to_ledger_once(pushed):  # noqa: F811
    credit_seconds = metrics.instruments().credit_seconds
    before = count(credit_seconds, source="callback")
    with db.connection():
        for _ in range(3):  # the same callback delivered three times credits once
            row, _ = inbox.store_callback(success_body("ws_CO_1"), "127.0.0.1")
            tasks.apply_callback(row.seq)
    assert count(credit_seconds, source="callback") - before == 1


def test_finished_and_dead_lettered_messages_are_counted(stub_broker):
    @dramatiq.actor(broker=stub_broker, queue_name="probe", max_retries=0,
                    actor_name="probe_outcomes")
    def probe(fail):
        if fail:
            raise RuntimeError("boom")

    of_probe = {"queue": "probe", "actor": "probe_outcomes"}
    counted = metrics.instruments()
    before = (count(counted.worker_messages, **of_probe, outcome="ok"),
              count(counted.worker_messages, **of_probe, outcome="error"),
              count(counted.worker_dead_letters, **of_probe))
    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        for fail in (False, False, True):
            probe.send(fail)
        stub_broker.join("probe", fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    assert count(counted.worker_messages, **of_probe, outcome="ok") - before[0] == 2
    assert count(counted.worker_messages, **of_probe, outcome="error") - before[1] == 1
    assert count(counted.worker_dead_letters, **of_probe) - before[2] == 1


def test_lines_logged_while_handling_a_message_carry_its_actor_and_message_id(
        stub_broker):
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.GatewayJsonFormatter("workers"))
    probe_log = logging.getLogger("tests.probe")
    probe_log.addHandler(handler)
    probe_log.setLevel(logging.INFO)

    @dramatiq.actor(broker=stub_broker, queue_name="probe", actor_name="probe_context")
    def probe(topup_id):
        probe_log.info("working on it")

    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        message = probe.send("tu_1")
        stub_broker.join("probe")
        worker.join()
    finally:
        worker.stop()
        probe_log.removeHandler(handler)
    probe_log.info("after the message")  # no handler now; and no context either
    [line] = [json.loads(x) for x in buffer.getvalue().splitlines()]
    assert (line["actor"], line["message_id"]) == ("probe_context", message.message_id)
    assert logs.context() == {}


@pytest.fixture
def worker_lines():
    """Every line the process logs at INFO, through the production formatter."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.GatewayJsonFormatter("workers"))
    root = logging.getLogger()
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(x) for x in buffer.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(saved_level)


def test_a_push_names_its_checkout_request_id_once_daraja_gave_it(
        stk, account_id, stub_broker, worker_lines):
    from tests.unit.stk_support import new_topup
    from workers.actors import push_topup
    topup_id = new_topup(account_id, "254712345678")
    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        push_topup.send(topup_id)
        stub_broker.join("topups")
    finally:
        worker.stop()
    with db.connection():
        checkout = topups.TopUp.get(topups.TopUp.id == topup_id).checkout_request_id
    [accepted] = [line for line in worker_lines() if line["message"] == "push accepted"]
    assert accepted["topup_id"] == topup_id and accepted["actor"] == "push_topup"
    assert accepted["checkout_request_id"] == checkout and checkout
    assert logs.context() == {}


def test_a_callback_message_names_its_topup_once_the_task_has_read_it(
        pushed, stub_broker, worker_lines):  # noqa: F811
    from workers.actors import apply_callback
    with db.connection():
        row, _ = inbox.store_callback(success_body("ws_CO_1"), "127.0.0.1")
    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        apply_callback.send(row.seq)
        stub_broker.join("callbacks")
    finally:
        worker.stop()
    [applied] = [line for line in worker_lines() if line["message"] == "callback applied"]
    assert (applied["actor"], applied["topup_id"], applied["checkout_request_id"]) == (
        "apply_callback", pushed["topup"], "ws_CO_1")
    assert logs.context() == {}
