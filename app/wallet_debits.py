"""POST /v1/wallet/debits (contract §3): spend from the wallet in cents, never below zero."""
from __future__ import annotations

from flask import Blueprint, g, request

from app import serializers, validation
from app.auth import require_account
from app.errors import ValidationFailed
from app.idempotent import conflict, problem_body, respond
from ledger import debits, idempotency

bp = Blueprint("wallet_debits", __name__, url_prefix="/v1")
bp.before_request(require_account)

ENDPOINT = "POST /v1/wallet/debits"
MAX_DESCRIPTION = 255


def debit_request(body: dict) -> dict:
    errors = [{"field": name, "message": "is not a known field"}
              for name in sorted(set(body) - {"amount_cents", "description"})]
    amount = body.get("amount_cents")
    if (not isinstance(amount, int) or isinstance(amount, bool)
            or not 1 <= amount <= debits.MAX_DEBIT_CENTS):
        errors.append({"field": "amount_cents", "message": "must be a whole number of cents "
                                                           f"from 1 to {debits.MAX_DEBIT_CENTS}"})
    description = body.get("description")
    if description is None:
        description = ""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        errors.append({"field": "description",
                       "message": f"must be a string of at most {MAX_DESCRIPTION} characters"})
    if errors:
        raise ValidationFailed(errors)
    return {"amount_cents": amount, "description": description}


@bp.post("/wallet/debits")
def create_debit():
    key = validation.idempotency_key(request)
    fields = debit_request(validation.json_body(request))
    account_id = g.account.id

    def work():
        try:
            entry = debits.debit(account_id, fields["amount_cents"], fields["description"])
        except debits.InsufficientFunds as short:
            return 402, problem_body(
                402, "insufficient_funds",
                f"The wallet holds {short.balance_cents} cents; this debit needs "
                f"{short.amount_cents}. Nothing was taken.")
        return 201, serializers.ledger_entry(entry)

    try:
        answer = idempotency.run_once(account_id, ENDPOINT, key,
                                      idempotency.fingerprint(fields), work)
    except idempotency.IdempotencyConflict:
        raise conflict() from None
    return respond(answer)
