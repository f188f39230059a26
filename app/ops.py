"""Operations (contract §5): ``GET /metrics`` and ``GET /ops/queues``.

``/metrics`` is Prometheus text: what this API server counted (callback acknowledgement
latency), summed over its gunicorn workers, and what the record says now (top-ups by status,
webhook deliveries, queue depths). It asks for no token: expose it to Prometheus only.

``/ops/queues`` needs ``Authorization: Bearer <OPS_TOKEN>``; without ``OPS_TOKEN`` the ops
endpoints are off (404).
"""
from __future__ import annotations

import hmac
import time

import dramatiq
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

import telemetry.metrics as metrics
from app.errors import ApiError
from app.serializers import timestamp
from ledger.db import database
from ledger.models import utcnow
from telemetry.collectors import RecordCollector
from telemetry.queues import Queues

bp = Blueprint("ops", __name__)

CALLBACK_ENDPOINT = "daraja.receive"


def declared_queues() -> set[str]:
    return set(dramatiq.get_broker().get_declared_queues())


@bp.get("/metrics")
def prometheus_metrics():
    collector = RecordCollector(database=database, redis_client=current_app.config["REDIS"],
                                declared_queues=declared_queues())
    return Response(metrics.render([collector]), mimetype=None,
                    headers={"Content-Type": metrics.content_type()})


def _require_ops_token() -> None:
    expected = current_app.config["SETTINGS"].ops_token
    if not expected:
        raise ApiError(404, "not_found", "No such resource.")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                             expected.encode()):
        raise ApiError(401, "unauthorized", "Send the ops token as 'Authorization: Bearer …'.",
                       headers={"WWW-Authenticate": 'Bearer realm="topup-gateway ops"'})


@bp.get("/ops/queues")
def queues():
    _require_ops_token()
    counts = Queues(current_app.config["REDIS"]).counts(declared_queues(), by_actor=True)
    return jsonify({"object": "queues", "generated_at": timestamp(utcnow()),
                    "data": [c.as_dict() for c in counts]})


# --- callback acknowledgement latency ----------------------------------------------------------

def _started():
    g.ops_request_started = time.perf_counter()


def _finished(response):
    if request.endpoint == CALLBACK_ENDPOINT and "ops_request_started" in g:
        metrics.callback_acknowledged(response.status_code,
                                      time.perf_counter() - g.ops_request_started)
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.before_request(_started)
    app.after_request(_finished)


# --- reconciliation runs (`topupctl reconcile`, ledger/reconcile.py) --------------------------

@bp.get("/ops/reconciliations")
def reconciliations():
    """Recorded runs, newest first: when, which statement (name, sha256), what they found and
    applied. ``limit`` (1–100, default 20) and ``starting_after`` page as every list does."""
    _require_ops_token()
    from app.errors import ValidationFailed
    from ledger import reconcile
    raw = request.args.get("limit", "20")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 100:
        raise ValidationFailed([{"field": "limit", "message": "must be from 1 to 100"}])
    page = reconcile.list_runs(int(raw), request.args.get("starting_after"))
    if page is None:
        raise ApiError(404, "not_found", "No such reconciliation run.")
    runs, has_more = page
    return jsonify({"object": "list", "data": [reconcile.run_json(r) for r in runs],
                    "has_more": has_more})


@bp.get("/ops/reconciliations/<run_id>")
def reconciliation(run_id):
    """One run, with its findings (less the matched rows) and every settlement it made."""
    _require_ops_token()
    from ledger import reconcile
    from ledger.models import Reconciliation
    run = Reconciliation.get_or_none(Reconciliation.id == run_id)
    if run is None:
        raise ApiError(404, "not_found", "No such reconciliation run.")
    return jsonify(reconcile.run_json(run, full=True))
