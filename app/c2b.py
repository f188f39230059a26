"""Daraja's two C2B URLs (contract §6), under the callback token, checked as the STK callback
is (the token in constant time, then the allowlist: ``daraja_callback.require_daraja``).

- Validation answers from the ledger alone, never calling Daraja, well inside Daraja's 8 s:
  ``{"ResultCode": "0", …}`` for a known account number and an amount in range,
  ``C2B00012`` / ``C2B00013`` / ``C2B00016`` otherwise (``ledger.c2b.verdict``). Always HTTP
  200 with a verdict: an error status would leave the choice to the registration's
  ResponseType.
- Confirmation is stored exactly as received (one INSERT, committed), answered
  ``{"ResultCode": 0, "ResultDesc": "Accepted"}``, and then, once the answer is written,
  handed to a worker (``apply_c2b``); a lost message is re-driven by the scheduler's sweep.
"""
from __future__ import annotations

import logging

from flask import Blueprint, jsonify, request

from app.daraja_callback import ACCEPTED, require_daraja
from app.enqueue import after_the_answer
from app.errors import ApiError
from ledger import c2b
from workers import c2b as c2b_actors

log = logging.getLogger(__name__)
bp = Blueprint("c2b", __name__)

_DESCRIPTIONS = {
    c2b.ACCEPT: "Accepted",
    c2b.UNKNOWN_ACCOUNT: "Rejected: invalid account number",
    c2b.BAD_AMOUNT: "Rejected: invalid amount",
    c2b.REFUSED: "Rejected",
}


@bp.post("/daraja/c2b/validation/<token>")
def validate(token: str):
    require_daraja(token)
    code = c2b.verdict(request.get_data(cache=False))
    log.info("paybill payment validated", extra={"result_code": code})
    return jsonify({"ResultCode": code, "ResultDesc": _DESCRIPTIONS[code]})


@bp.post("/daraja/c2b/confirmation/<token>")
def confirm(token: str):
    require_daraja(token)
    seq, payment = c2b.store(request.get_data(cache=False), request.remote_addr)
    if payment is None:
        # kept for an operator to read, but nothing to credit
        raise ApiError(400, "invalid_json", "Not a C2B confirmation body.")
    # answered first, then enqueued: the row is committed, the answer need not wait on Redis
    return after_the_answer(jsonify(ACCEPTED), c2b_actors.apply_c2b, seq, c2b_confirmation=seq)
