"""Reading request bodies: JSON objects only, known fields only, every error named."""
from __future__ import annotations

import json
import re

from flask import Request

from app.errors import ApiError, ValidationFailed
from ledger.phones import InvalidPhone, normalize_kenyan_mobile

MAX_AMOUNT = 250_000
_REFERENCE = re.compile(r"[A-Za-z0-9]{1,12}")
_PRINTABLE_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces
_ID = re.compile(r"[a-z]{2,5}_[0-9a-z]{1,40}")
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # \u0000 as json.dumps writes it


def json_body(request: Request) -> dict:
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       "Send the body as application/json.")
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw)
        # "\ud800" is valid JSON but no Unicode text: it could be neither stored nor hashed;
        # "\u0000" is text that PostgreSQL refuses to store.
        text = json.dumps(body, ensure_ascii=False)
        text.encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):  # RecursionError: nested too deep
        raise ApiError(400, "invalid_json", "The body is not valid JSON text.") from None
    if _ESCAPED_NUL.search(text):
        raise ApiError(400, "invalid_json", "The body must not contain NUL characters.")
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "The body must be a JSON object.")
    return body


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _PRINTABLE_KEY.fullmatch(key):
        raise ValidationFailed([{"field": "Idempotency-Key",
                                 "message": "must be 1 to 255 printable characters"}])
    return key


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def topup_request(body: dict) -> dict:
    errors = []
    allowed = {"provider", "amount", "phone", "reference", "metadata"}
    for name in sorted(set(body) - allowed):
        errors.append({"field": name, "message": "is not a known field"})

    provider = body.get("provider")
    if provider != "mpesa":
        errors.append({"field": "provider", "message": 'must be "mpesa"'})

    amount = body.get("amount")
    if not _is_int(amount) or not 1 <= amount <= MAX_AMOUNT:
        errors.append({"field": "amount",
                       "message": f"must be a whole number of shillings from 1 to {MAX_AMOUNT}"})

    phone = None
    raw_phone = body.get("phone")
    try:
        phone = normalize_kenyan_mobile(raw_phone)
    except InvalidPhone:
        errors.append({"field": "phone", "message": "must be a Kenyan mobile number "
                                                    "(07…, 01…, 2547…, +254…)"})

    reference = body.get("reference")
    if reference is not None and (not isinstance(reference, str)
                                  or not _REFERENCE.fullmatch(reference)):
        errors.append({"field": "reference", "message": "must be 1 to 12 letters and digits"})

    metadata = body.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        errors.append({"field": "metadata", "message": "must be an object"})
    else:
        if len(metadata) > 20:
            errors.append({"field": "metadata", "message": "must have at most 20 keys"})
        for key, value in metadata.items():
            if not 1 <= len(key) <= 40:
                errors.append({"field": f"metadata.{key[:40]}",
                               "message": "keys must be 1 to 40 characters"})
            elif not isinstance(value, str) or len(value) > 500:
                errors.append({"field": f"metadata.{key}",
                               "message": "must be a string of at most 500 characters"})
    if errors:
        raise ValidationFailed(errors)
    return {"amount": amount, "phone": phone, "reference": reference, "metadata": metadata}


def page_args(args) -> tuple[int, str | None]:
    errors = []
    limit = 20
    raw = args.get("limit")
    if raw is not None:
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 100:  # not "²"
            errors.append({"field": "limit", "message": "must be a whole number from 1 to 100"})
        else:
            limit = int(raw)
    starting_after = args.get("starting_after")
    if starting_after is not None and not _ID.fullmatch(starting_after):
        errors.append({"field": "starting_after", "message": "must be an id"})
    if errors:
        raise ValidationFailed(errors)
    return limit, starting_after
