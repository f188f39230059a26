"""The API's enqueues after the answer (app/enqueue.py): gathered by one thread and sent to
Redis in one pipeline, each message the one ``actor.send`` would have enqueued."""
import logging

import dramatiq
import fakeredis
import pytest
from dramatiq.brokers.redis import RedisBroker

from app.enqueue import BatchingSender, send_pipelined


@pytest.fixture
def redis_broker():
    broker = RedisBroker(client=fakeredis.FakeRedis())
    yield broker
    broker.close()


def an_actor(broker, name="apply_callback"):
    return dramatiq.actor(lambda seq: None, actor_name=name, queue_name="callbacks",
                          broker=broker)


def queued(broker, queue="callbacks") -> list[tuple]:
    consumer = broker.consume(queue, prefetch=1000, timeout=10)
    messages = []
    for message in consumer:
        if message is None:
            break
        messages.append((message.actor_name, tuple(message.args)))
        consumer.ack(message)
    consumer.close()
    return messages


def test_a_pipelined_batch_enqueues_what_one_send_each_would_have(redis_broker):
    actor = an_actor(redis_broker)
    actor.send(0)
    send_pipelined([(actor, (seq,), {}) for seq in (1, 2, 3)])
    assert queued(redis_broker) == [("apply_callback", (seq,)) for seq in (0, 1, 2, 3)]


def test_a_message_whose_script_redis_forgot_is_sent_again_on_its_own(redis_broker):
    actor = an_actor(redis_broker)
    actor.send(0)                              # the dispatch script is loaded
    redis_broker.client.script_flush()         # Redis restarted, or someone flushed scripts
    send_pipelined([(actor, (seq,), {}) for seq in (1, 2)])
    assert queued(redis_broker) == [("apply_callback", (seq,)) for seq in (0, 1, 2)]


def test_what_was_submitted_is_sent_by_the_time_the_sender_closes(redis_broker):
    actor = an_actor(redis_broker)
    sender = BatchingSender(linger_s=60)       # the thread would wait a minute: close sends
    for seq in range(5):
        sender.submit(actor, seq, checkout_request_id=f"ws_CO_{seq}")
    sender.close()
    assert sorted(queued(redis_broker)) == [("apply_callback", (seq,)) for seq in range(5)]


def test_the_thread_sends_without_being_asked(redis_broker):
    from tests.waiting import wait_until
    actor = an_actor(redis_broker)
    sender = BatchingSender(linger_s=0)
    sender.submit(actor, 7)
    wait_until(lambda: redis_broker.do_qsize("callbacks") == 1, timeout=10,
               message="the message to be sent")
    sender.close()
    assert queued(redis_broker) == [("apply_callback", (7,))]


def test_a_batch_redis_refuses_is_logged_for_the_sweep_and_raises_nothing(
        redis_broker, monkeypatch, caplog):
    actor = an_actor(redis_broker)

    def redis_down(*args, **kwargs):
        raise ConnectionError("Redis is down")
    monkeypatch.setattr(type(redis_broker.client), "pipeline", redis_down)
    sender = BatchingSender(linger_s=60)
    with caplog.at_level(logging.WARNING, logger="app.enqueue"):
        sender.submit(actor, 1, checkout_request_id="ws_CO_1")
        sender.submit(actor, 2, checkout_request_id="ws_CO_2")
        sender.close()
    lost = [r for r in caplog.records if r.getMessage().startswith("enqueue failed")]
    assert sorted(r.checkout_request_id for r in lost) == ["ws_CO_1", "ws_CO_2"]


def test_a_broker_other_than_redis_is_sent_to_at_once(stub_broker):
    from workers import actors
    BatchingSender().submit(actors.apply_callback, 42)
    assert stub_broker.queues["callbacks"].qsize() == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_sender_whose_thread_died_starts_another(redis_broker, monkeypatch):
    from tests.waiting import wait_until
    actor = an_actor(redis_broker)
    sender = BatchingSender(linger_s=0)

    def die(batch):
        raise SystemExit   # whatever ends a thread
    monkeypatch.setattr(sender, "_send", die)
    sender.submit(actor, 1)
    wait_until(lambda: not sender._thread.is_alive(), timeout=10, message="the thread to die")
    monkeypatch.undo()
    sender.submit(actor, 2)
    wait_until(lambda: redis_broker.do_qsize("callbacks") == 1, timeout=10,
               message="the next message to be sent")
    sender.close()
    assert queued(redis_broker) == [("apply_callback", (2,))]


def test_what_is_submitted_after_close_is_sent_at_once(redis_broker):
    actor = an_actor(redis_broker)
    sender = BatchingSender(linger_s=60)
    sender.submit(actor, 1)
    sender.close()
    sender.submit(actor, 2)
    assert queued(redis_broker) == [("apply_callback", (1,)), ("apply_callback", (2,))]


def test_a_batch_on_a_doorbell_broker_rings_its_queues_in_the_same_round_trip(monkeypatch):
    from workers.doorbell import DoorbellBroker, bell_key
    broker = DoorbellBroker(client=fakeredis.FakeRedis())
    broker.client.script_load(broker.scripts["dispatch"].script)
    callbacks = an_actor(broker)
    pushes = dramatiq.actor(lambda topup_id: None, actor_name="push_topup", queue_name="topups",
                            broker=broker)
    round_trips = []
    pipeline = broker.client.pipeline

    def counted(*args, **kwargs):
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute
        pipe.execute = lambda *a, **k: round_trips.append(len(pipe.command_stack)) or execute(
            *a, **k)
        return pipe
    monkeypatch.setattr(broker.client, "pipeline", counted)
    send_pipelined([(callbacks, (1,), {}), (pushes, ("tu_1",), {}), (callbacks, (2,), {})])
    monkeypatch.undo()
    assert round_trips == [3 + 2 + 2]   # three messages, then LPUSH and LTRIM per queue
    assert broker.client.llen(bell_key("dramatiq", "callbacks")) == 2
    assert broker.client.llen(bell_key("dramatiq", "topups")) == 1
    assert queued(broker) == [("apply_callback", (1,)), ("apply_callback", (2,))]
    assert queued(broker, "topups") == [("push_topup", ("tu_1",))]
    broker.close()
