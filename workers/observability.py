"""What the workers tell about themselves, as Dramatiq middleware.

- :class:`LogContext`: while a message is handled, every log line carries its ``actor`` and
  ``message_id``. The tasks add the ``topup_id`` and ``checkout_request_id`` of the top-up
  the message is about as soon as they have read them (:func:`telemetry.logs.amend`).
- :class:`Metrics`: messages finished by queue, actor and outcome, their duration, dead
  letters; and the fork process that serves the workers' ``/metrics`` (:func:`serve_metrics`).
- :class:`DeadLetterNotes`: a message about to be dead-lettered is written back to its own
  entry in Dramatiq's hash first, with the final error, so that ``topupctl queues dead``
  shows why it died (Dramatiq's Retries keeps only the previous attempt's traceback there,
  and none at all for a message that was not retried).
"""
from __future__ import annotations

import logging
import threading
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from telemetry import logs, metrics
from workers import runtime

log = logging.getLogger(__name__)

_NOTE_IF_PRESENT = """
if redis.call("hexists", KEYS[1], ARGV[1]) == 1 then
  redis.call("hset", KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


class LogContext(dramatiq.Middleware):
    def __init__(self):
        self._local = threading.local()

    def _tokens(self) -> dict:
        if not hasattr(self._local, "tokens"):
            self._local.tokens = {}
        return self._local.tokens

    def before_process_message(self, broker, message):
        self._tokens()[message.message_id] = logs.bind(actor=message.actor_name,
                                                       message_id=message.message_id)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        token = self._tokens().pop(message.message_id, None)
        if token is not None:
            logs.unbind(token)

    after_skip_message = after_process_message


class Metrics(dramatiq.Middleware):
    def __init__(self):
        self._local = threading.local()

    @property
    def forks(self):
        return [serve_metrics]

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
    """The error that killed a message, kept from ``after_process_message`` (the worker thread
    that ran it) to ``before_nack`` (the consumer thread that dead-letters it). Kept by the
    message's Redis id, which each delivery has its own of: a retry is a new one."""

    def __init__(self):
        self._scripts = {}
        self._errors: dict[str, str] = {}   # Redis message id -> error, until acked or nacked

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is not None and isinstance(broker, RedisBroker):
            text = f"{type(exception).__name__}: {exception}"
            self._errors[message.options["redis_message_id"]] = logs.redactor().text(text)[:1000]

    def after_ack(self, broker, message):
        if isinstance(broker, RedisBroker):
            self._errors.pop(message.options["redis_message_id"], None)

    def before_nack(self, broker, message):
        if not isinstance(broker, RedisBroker):
            return
        redis_id = message.options["redis_message_id"]
        try:
            error = self._errors.pop(redis_id, None)
            if error is not None:
                message.options["dead_letter_error"] = error
            script = self._scripts.get(id(broker))
            if script is None:
                script = self._scripts[id(broker)] = broker.client.register_script(
                    _NOTE_IF_PRESENT)
            script(keys=[f"{broker.namespace}:{message.queue_name}.msgs"],
                   args=[redis_id, message.encode()])
        except Exception:
            log.warning("could not note why message %s died", message.message_id, exc_info=True)


def middleware() -> list[dramatiq.Middleware]:
    return [LogContext(), Metrics(), DeadLetterNotes()]


def serve_metrics() -> int:
    """The body of the fork Dramatiq starts beside the worker processes: the workers'
    ``/metrics`` (:mod:`telemetry.worker_metrics`). To run it, Dramatiq imports this module,
    and so the ``workers`` package, which sets up this process of the ``dramatiq`` command as
    it does the worker processes: logs, the metrics directory they share, the settings."""
    from telemetry import worker_metrics
    settings = runtime.get().settings
    return worker_metrics.serve(settings.worker_metrics_host, settings.worker_metrics_port)
