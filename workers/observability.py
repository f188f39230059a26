"""What the workers tell about themselves, as Dramatiq middleware.

- :class:`LogContext`: while a message is handled, every log line carries its ``actor`` and
  ``message_id`` and, when the message concerns a top-up, its ``topup_id`` and
  ``checkout_request_id``. The tasks that read their top-up (or delivery) anyway add what
  they read to the context themselves (:func:`telemetry.logs.amend`); for the other
  messages the middleware looks the top-up up once.
- :class:`Metrics`: messages finished by queue, actor and outcome, their duration, dead
  letters; and the fork process that serves the workers' ``/metrics``
  (:func:`telemetry.worker_metrics.serve`).
- :class:`DeadLetterNotes`: a message about to be dead-lettered is written back to its own
  entry in Dramatiq's hash first, with the final error, so that ``topupctl queues dead``
  shows why it died (Dramatiq's Retries keeps only the previous attempt's traceback there,
  and none at all for a message that was not retried).
- :class:`ReturnPrefetched`: on shutdown, messages a consumer fetched from Redis but had not
  yet handed to a worker thread go back to their queue at once, instead of waiting for the
  heartbeat timeout and a maintenance pass (engineering-notes.md: minutes).
"""
from __future__ import annotations

import logging
import threading
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from ledger import db
from ledger.models import TopUp
from telemetry import logs, metrics
from workers import tasks

log = logging.getLogger(__name__)

_NOTE_IF_PRESENT = """
if redis.call("hexists", KEYS[1], ARGV[1]) == 1 then
  redis.call("hset", KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


def _topup_of_callback(seq: int) -> tuple[str | None, str | None]:
    # Every credit's message comes here first. The row read (one prepared SELECT) is the one
    # the task needs too: it is kept for it (workers.tasks.read_callback_ahead).
    row = tasks.read_callback_ahead(seq)
    if row is None or not row.checkout_request_id:
        return None, None
    return row.topup_id, row.checkout_request_id


def _topup_of_delivery(delivery_id: str) -> str | None:
    p = db.database.param
    row = db.database.execute_sql(
        f"SELECT e.topup_id FROM webhook_delivery d JOIN event e ON e.id = d.event_id "
        f"WHERE d.id = {p}", (delivery_id,)).fetchone()
    return row[0] if row else None


# Their tasks read the row anyway and add topup_id / checkout_request_id to the context as
# soon as they have it (logs.amend): a push reads its top-up (which has no CheckoutRequestID
# before Daraja's answer), a query its top-up, a webhook attempt its claimed delivery. Read
# here as well, that was 3 statements and ~0.3 ms of worker CPU per top-up (make bench).
TASKS_NAME_THEIR_TOPUP = frozenset({"push_topup", "query_topup", "deliver_webhook"})


def subject_of(message) -> dict:
    """The top-up (and callback or delivery) a message is about, as log fields."""
    fields: dict = {}
    args = list(message.args or ()) + list((message.kwargs or {}).values())
    strings = [a for a in args if isinstance(a, str)]
    topup_id = next((a for a in strings if a.startswith("tu_")), None)
    checkout = None
    reads = message.actor_name not in TASKS_NAME_THEIR_TOPUP
    try:
        if message.actor_name == "apply_callback" and args and isinstance(args[0], int):
            fields["callback"] = args[0]
            topup_id, checkout = _topup_of_callback(args[0])
        delivery = next((a for a in strings if a.startswith("whd_")), None)
        if delivery:
            fields["delivery"] = delivery
            if reads:
                topup_id = topup_id or _topup_of_delivery(delivery)
        if reads and topup_id and checkout is None:
            checkout = TopUp.select(TopUp.checkout_request_id).where(
                TopUp.id == topup_id).scalar()
    except Exception as exc:  # a log field is never worth failing a message for
        log.debug("no log context for %s: %s", message.actor_name, type(exc).__name__)
    fields["topup_id"] = topup_id
    fields["checkout_request_id"] = checkout
    return {k: v for k, v in fields.items() if v is not None}


class LogContext(dramatiq.Middleware):
    def __init__(self):
        self._local = threading.local()

    def _tokens(self) -> dict:
        if not hasattr(self._local, "tokens"):
            self._local.tokens = {}
        return self._local.tokens

    def before_process_message(self, broker, message):
        fields = {"actor": message.actor_name, "message_id": message.message_id}
        if db.database.obj is not None:
            fields.update(subject_of(message))
        self._tokens()[message.message_id] = logs.bind(**fields)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        tasks.forget_read_ahead()  # the task took it, or never ran
        token = self._tokens().pop(message.message_id, None)
        if token is not None:
            logs.unbind(token)

    after_skip_message = after_process_message


class Metrics(dramatiq.Middleware):
    def __init__(self):
        self._local = threading.local()

    @property
    def forks(self):
        from telemetry.worker_metrics import serve
        return [serve]

    def _started(self) -> dict:
        if not hasattr(self._local, "started"):
            self._local.started = {}
        return self._local.started

    def before_process_message(self, broker, message):
        self._started()[message.message_id] = time.monotonic()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        started = self._started().pop(message.message_id, None)
        metrics.message_finished(message.queue_name, message.actor_name,
                                 "error" if exception is not None else "ok",
                                 None if started is None else time.monotonic() - started)

    def after_skip_message(self, broker, message):
        self._started().pop(message.message_id, None)
        metrics.message_finished(message.queue_name, message.actor_name, "skipped", None)

    def after_nack(self, broker, message):
        metrics.dead_lettered(message.queue_name, message.actor_name)


class DeadLetterNotes(dramatiq.Middleware):
    def __init__(self):
        self._scripts = {}

    def before_nack(self, broker, message):
        if not isinstance(broker, RedisBroker):
            return
        try:
            exception = getattr(message, "_exception", None)
            if exception is not None:
                text = f"{type(exception).__name__}: {exception}"
                message.options["dead_letter_error"] = logs.redactor().text(text)[:1000]
            script = self._scripts.get(id(broker))
            if script is None:
                script = self._scripts[id(broker)] = broker.client.register_script(
                    _NOTE_IF_PRESENT)
            script(keys=[f"{broker.namespace}:{message.queue_name}.msgs"],
                   args=[message.options["redis_message_id"], message.encode()])
        except Exception:
            log.warning("could not note why message %s died", message.message_id, exc_info=True)


class ReturnPrefetched(dramatiq.Middleware):
    def before_consumer_thread_shutdown(self, broker, thread):
        consumer = getattr(thread, "consumer", None)
        cache = getattr(consumer, "message_cache", None)
        if not cache:
            return
        try:
            messages = [dramatiq.broker.MessageProxy(Message.decode(data))
                        for data in cache if data]
            consumer.message_cache = []
            consumer.requeue(messages)
            log.info("returned %d prefetched messages to %s", len(messages), thread.queue_name)
        except Exception:
            log.warning("could not return prefetched messages to %s", thread.queue_name,
                        exc_info=True)


def middleware() -> list[dramatiq.Middleware]:
    return [LogContext(), Metrics(), DeadLetterNotes(), ReturnPrefetched()]
