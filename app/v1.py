"""The client API (contract §3): views parse, call one ledger function, and answer."""
from __future__ import annotations

from flask import Blueprint, current_app, g, request

from app import ids, serializers, validation
from app.auth import require_account
from app.enqueue import after_commit
from app.errors import ApiError
from app.idempotent import conflict
from ledger import topups, wallets
from ledger.models import FAILED, PENDING, SUCCEEDED, UNKNOWN
from workers import actors

bp = Blueprint("v1", __name__, url_prefix="/v1")
bp.before_request(require_account)

_STATUSES = (PENDING, SUCCEEDED, FAILED, UNKNOWN)


@bp.post("/topups")
def create_topup():
    key = validation.idempotency_key(request)
    fields = validation.topup_request(validation.json_body(request))
    fingerprint = topups.fingerprint(fields)
    try:
        topup, created = topups.create_topup(
            g.account.id, idempotency_key=key, request_fingerprint=fingerprint, **fields)
    except topups.IdempotencyConflict:
        raise conflict() from None
    if created:
        # committed: a push that cannot be sent now is re-driven by the scheduler's sweep
        # of top-ups never pushed (workers.sweeps.unsent_pushes), and the client has its 202
        after_commit(actors.push_topup, topup.id, topup_id=topup.id)
        return serializers.topup(topup), 202
    # A replay: the same top-up as it now stands, marked as debits and webhook endpoints are.
    return serializers.topup(topup), 202, {"Idempotent-Replayed": "true"}


@bp.get("/topups/<topup_id>")
def get_topup(topup_id):
    topup = topups.get_topup(g.account.id, topup_id) if ids.plausible(topup_id) else None
    if topup is None:
        raise ApiError(404, "not_found", f"No top-up {topup_id[:64]!r}.")
    return serializers.topup(topup)


@bp.get("/topups")
def list_topups():
    limit, starting_after = validation.page_args(request.args)
    status = request.args.get("status")
    if status is not None and status not in _STATUSES:
        raise validation.ValidationFailed(
            [{"field": "status", "message": "must be one of " + ", ".join(_STATUSES)}])
    found = topups.list_topups(g.account.id, status=status, limit=limit,
                               starting_after=starting_after)
    if found is None:
        raise ApiError(404, "not_found", "starting_after names no top-up of this account.")
    return serializers.page(*found, serializers.topup)


@bp.get("/wallet")
def get_wallet():
    wallet, account_number = wallets.wallet_to_fund(g.account.id)
    return serializers.wallet(wallet, account_number=account_number,
                              paybill=current_app.config["SETTINGS"].daraja_c2b_shortcode)


@bp.get("/wallet/transactions")
def list_transactions():
    limit, starting_after = validation.page_args(request.args)
    found = wallets.list_entries(g.account.id, limit=limit, starting_after=starting_after)
    if found is None:
        raise ApiError(404, "not_found", "starting_after names no entry of this wallet.")
    return serializers.page(*found, serializers.ledger_entry)
