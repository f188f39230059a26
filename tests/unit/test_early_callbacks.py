"""A callback that arrived while its push was in flight is applied by the push's own message
(workers/actors.py), not by a message of its own; one whose application the message's retries
would handle (here a confirming query that must wait) is sent to its queue as before."""
from __future__ import annotations

import dramatiq

from workers import actors, tasks


def test_early_callbacks_are_applied_in_the_push_and_sent_only_when_they_must_wait(
        stub_broker, monkeypatch):
    monkeypatch.setattr(tasks, "push", lambda *a, **k: ("not_claimed", [7, 8]))
    applied = []

    def apply(seq, **kwargs):
        if seq == 8:
            raise tasks.AskAgainLater("still processing")
        applied.append(seq)
        return "credited"

    monkeypatch.setattr(tasks, "apply_callback", apply)
    actors.push_topup.fn("tu_early")
    assert applied == [7]
    sent = [dramatiq.Message.decode(data)
            for data in stub_broker.queues[actors.CALLBACKS_QUEUE].queue]
    assert [(m.actor_name, list(m.args)) for m in sent] == [("apply_callback", [8])]
