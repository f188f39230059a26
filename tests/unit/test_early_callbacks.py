"""A callback that arrived while its push was in flight is applied by the push's own message
(workers/actors.py), not by a message of its own; one whose application the message's retries
would handle (here a confirming query that must wait) is sent to its queue as before."""
from __future__ import annotations

from tests.messages import taken
from workers import actors, tasks


def test_early_callbacks_are_applied_in_the_push_and_sent_only_when_they_must_wait(
        stub_broker, monkeypatch):
    monkeypatch.setattr(tasks, "push", lambda *a, **k: ("sent", [7, 8]))
    applied = []

    def apply(seq, **kwargs):
        if seq == 8:
            raise tasks.AskAgainLater("still processing")
        applied.append(seq)
        return "credited"

    monkeypatch.setattr(tasks, "apply_callback", apply)
    actors.push_topup.fn("tu_early")
    assert applied == [7]
    sent = taken(stub_broker, actors.CALLBACKS_QUEUE)
    assert [(m.actor_name, list(m.args)) for m in sent] == [("apply_callback", [8])]


def test_a_push_outcome_the_database_could_not_take_goes_to_a_message_of_its_own(
        stub_broker, monkeypatch):
    outcome = {"kind": "accepted", "checkout_request_id": "ws_CO_1",
               "merchant_request_id": "m", "query_after_s": 60}

    def database_down(*args, **kwargs):
        raise tasks.PushOutcomeNotRecorded(outcome)

    monkeypatch.setattr(tasks, "push", database_down)
    actors.push_topup.fn("tu_lost_answer")
    sent = taken(stub_broker, actors.TOPUPS_QUEUE)
    assert [(m.actor_name, list(m.args)) for m in sent] == [
        ("record_push_outcome", ["tu_lost_answer", outcome])]


def test_waiting_for_daraja_is_a_retry_logged_at_info_not_an_error(
        stub_broker, stub_worker, monkeypatch, caplog):
    asked = []

    def still_processing(topup_id, *args, **kwargs):
        asked.append(topup_id)
        raise tasks.AskAgainLater("still processing")

    monkeypatch.setattr(tasks, "query", still_processing)
    caplog.set_level("INFO")
    actors.query_topup.send_with_options(args=("tu_waiting",), min_backoff=1, max_backoff=1)
    stub_broker.join(actors.QUERIES_QUEUE, fail_fast=False)
    stub_worker.join()

    assert asked == ["tu_waiting"] * 26   # asked, then again 25 times at most
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
    assert any("Retrying message" in r.getMessage() and r.levelname == "INFO"
               for r in caplog.records)
