"""Answering requests that carry an Idempotency-Key (the ledger keeps the answers)."""
from __future__ import annotations

from flask import jsonify

from app.errors import PROBLEM_JSON, ApiError, problem
from ledger.idempotency import Answer


def conflict() -> ApiError:
    return ApiError(409, "idempotency_conflict",
                    "This Idempotency-Key was used with a different request body.")


def problem_body(status: int, code: str, detail: str) -> dict:
    """A problem+json body to store as an answer (the same shape every error has)."""
    return problem(status, code, detail).get_json()


def respond(answer: Answer):
    """The answer, the same on a replay; a replay says so in ``Idempotent-Replayed``."""
    response = jsonify(answer.body)
    response.status_code = answer.status
    if answer.status >= 400:
        response.mimetype = PROBLEM_JSON
    if answer.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response
