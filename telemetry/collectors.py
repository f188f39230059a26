"""Metrics read from the record when Prometheus scrapes: nothing is counted twice.

One collector, :class:`RecordCollector`, reads both sources:

- top-ups by status (``topup_topups``), webhook deliveries by
  status (``topup_webhook_deliveries``) and webhook attempts by outcome
  (``topup_webhook_attempts``) from the database, with plain SQL (the webhook tables are
  read only when they exist);
- ``topup_queue_messages{queue,state}``,
  ``topup_queue_oldest_ready_age_seconds`` and ``topup_queue_held_by_dead_workers`` from
  Dramatiq's keys in Redis (:mod:`telemetry.queues`).

It also reports ``topup_metrics_source_up{source}``: 1 if it could read the source, else 0
(and that source's metrics are left out of that scrape).
"""
from __future__ import annotations

import logging

from telemetry.queues import Queues

log = logging.getLogger(__name__)

TOPUP_STATUSES = ("pending", "succeeded", "failed", "unknown")
DELIVERY_STATUSES = ("pending", "delivered", "failed", "cancelled")
ATTEMPT_OUTCOMES = ("success", "http_error", "network_error")
QUEUE_STATES = ("ready", "delayed", "in_progress", "dead")


def _gauge(name: str, documentation: str, labels: list[str]):
    """A prometheus-client gauge family. The library is imported here, at scrape time, not
    with this module: it picks its storage when it is first imported, and that is the
    process's start-up to decide (:mod:`telemetry.metrics`)."""
    from prometheus_client.core import GaugeMetricFamily
    return GaugeMetricFamily(name, documentation, labels=labels)


class RecordCollector:
    """``RecordCollector(database=..., redis_client=..., declared_queues=...)``; either source
    may be None."""

    def __init__(self, *, database=None, redis_client=None, declared_queues=(), **queue_options):
        self.database = database
        self.queues = Queues(redis_client, **queue_options) if redis_client is not None else None
        self.declared = tuple(declared_queues)
        self._tables: set[str] = set()

    def collect(self):
        up = _gauge("topup_metrics_source_up", "1 when this scrape could read the source, else 0.",
                    labels=["source"])
        if self.database is not None:
            try:
                families = list(self._ledger())
            except Exception as exc:
                log.warning("metrics: the database did not answer: %s", type(exc).__name__)
                families = None
            up.add_metric(["database"], 0 if families is None else 1)
            yield from families or ()
        if self.queues is not None:
            try:
                families = list(self._queues())
            except Exception as exc:
                log.warning("metrics: Redis did not answer: %s", type(exc).__name__)
                families = None
            up.add_metric(["redis"], 0 if families is None else 1)
            yield from families or ()
        yield up

    # -- the database ----------------------------------------------------------------------

    def _has_table(self, name: str) -> bool:
        if name not in self._tables and self.database.table_exists(name):
            self._tables.add(name)
        return name in self._tables

    def _grouped(self, sql: str) -> dict[str, int]:
        return {str(key): int(count) for key, count in self.database.execute_sql(sql).fetchall()}

    def _ledger(self):
        topups = self._grouped("SELECT status, COUNT(*) FROM top_up GROUP BY status")
        family = _gauge("topup_topups", "Top-ups in the ledger, by status.", labels=["status"])
        for status in sorted(set(TOPUP_STATUSES) | set(topups)):
            family.add_metric([status], topups.get(status, 0))
        yield family
        if self._has_table("webhook_delivery"):
            deliveries = self._grouped(
                "SELECT status, COUNT(*) FROM webhook_delivery GROUP BY status")
            family = _gauge("topup_webhook_deliveries",
                            "Webhook deliveries (one event for one endpoint), by status.",
                            labels=["status"])
            for status in sorted(set(DELIVERY_STATUSES) | set(deliveries)):
                family.add_metric([status], deliveries.get(status, 0))
            yield family
        if self._has_table("webhook_attempt"):
            attempts = self._grouped(
                "SELECT CASE WHEN status_code BETWEEN 200 AND 299 THEN 'success' "
                "WHEN status_code IS NULL THEN 'network_error' ELSE 'http_error' END, "
                "COUNT(*) FROM webhook_attempt GROUP BY 1")
            family = _gauge("topup_webhook_attempts",
                            "Webhook delivery attempts, by outcome: success (2xx), "
                            "http_error (another status), network_error (no answer).",
                            labels=["outcome"])
            for outcome in ATTEMPT_OUTCOMES:
                family.add_metric([outcome], attempts.get(outcome, 0))
            yield family

    # -- Redis ---------------------------------------------------------------------------------

    def _queues(self):
        counts = self.queues.counts(self.declared)
        messages = _gauge(
            "topup_queue_messages",
            "Messages in each Dramatiq queue, by state: ready, delayed, in_progress (fetched by "
            "a worker, not yet acknowledged), dead (dead-lettered).", labels=["queue", "state"])
        ages = _gauge(
            "topup_queue_oldest_ready_age_seconds",
            "How long the oldest ready message has waited to be picked up (0 when none waits).",
            labels=["queue"])
        stranded = _gauge(
            "topup_queue_held_by_dead_workers",
            "In-progress messages held by workers whose heartbeat stopped.", labels=["queue"])
        for queue in counts:
            for state in QUEUE_STATES:
                messages.add_metric([queue.queue, state], getattr(queue, state))
            ages.add_metric([queue.queue], queue.oldest_ready_age_s or 0)
            stranded.add_metric([queue.queue], queue.held_by_dead_workers)
        yield messages
        yield ages
        yield stranded
