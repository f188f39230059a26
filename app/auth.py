"""Bearer API keys: every /v1 request names its account, and sees only that account's objects."""
from __future__ import annotations

from flask import g, request

from app.errors import ApiError
from ledger import accounts


def require_account() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    account = accounts.authenticate(key.strip()) if scheme.lower() == "bearer" else None
    if account is None:
        raise ApiError(401, "unauthorized", "Send a valid API key as 'Authorization: Bearer sk_…'.",
                       headers={"WWW-Authenticate": 'Bearer realm="topup-gateway"'})
    g.account = account
