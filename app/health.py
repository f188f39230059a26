"""Liveness and readiness (contract §5)."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ledger.db import database

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    down = []
    try:
        database.execute_sql("SELECT 1")
    except Exception:
        down.append("database")
    try:
        current_app.config["REDIS"].ping()
    except Exception:
        down.append("redis")
    if down:
        return jsonify({"status": "unavailable", "down": down}), 503
    return jsonify({"status": "ok"})
