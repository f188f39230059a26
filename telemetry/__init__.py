"""Seeing the gateway run: JSON logs (:mod:`telemetry.logs`), Prometheus metrics
(:mod:`telemetry.metrics`), Dramatiq's queues in Redis (:mod:`telemetry.queues`), and the
redaction every one of them applies (:mod:`telemetry.redact`).

A leaf package: it imports neither Flask, the ledger nor the workers, and reads no setting
itself; the entrypoints pass it what it needs.
"""
