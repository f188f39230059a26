"""Reading Daraja's answers to the paybill (C2B) calls: register URL (v2), Pull Transactions'
registration and query. Pure functions, no I/O; the client (:mod:`daraja.client`) calls them.

- Register URL answers ``{"OriginatorCoversationID" (sic), "ResponseCode": "0",
  "ResponseDescription": "Success"}``.
- Pull Transactions' registration answers ``ResponseStatus`` ``"1000"``, or ``"1001"`` when
  the shortcode is registered already (not an error: it is a one-time step).
- A pull answers ``ResponseCode`` ``"1000"`` (not ``"0"``) with its rows, nested one list deep
  (``"Response": [[{…}, …]]``), or ``"1001"`` / ``[[]]`` when there is nothing; the rows may
  also come as a JSON string. Each row: ``transactionId``, ``trxDate``, ``msisdn``,
  ``transactiontype``, ``billreference``, ``amount``, ``organizationname``.

Anything else is read by the rules every endpoint shares (:func:`daraja.answers.error_for`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from daraja import errors
from daraja.answers import Answer, Scrub, error_for

__all__ = ["UrlsRegistered", "PullRegistered", "PullPage", "read_register_urls",
           "read_register_pull", "read_pull", "RESPONSE_TYPES"]

RESPONSE_TYPES = ("Completed", "Cancelled")
_PULL_OK, _PULL_NOTHING = "1000", "1001"


@dataclass(frozen=True)
class UrlsRegistered:
    originator_conversation_id: str | None
    response_description: str
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class PullRegistered:
    already: bool              # "1001": the shortcode was registered before
    response_description: str
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class PullPage:
    """One page of Pull Transactions: its rows, as Daraja gave them (dicts)."""
    transactions: list
    raw: dict = field(repr=False, compare=False)


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _refused(endpoint: str, answer: Answer, scrub: Scrub, code: str | None,
             description: str | None) -> errors.DarajaError:
    body = answer.body or {}
    if code is not None and "errorCode" not in body and "fault" not in body:
        # Daraja's own "no" in the endpoint's own words: nothing was done
        return errors.RequestRejected(
            scrub(f"Daraja refused the {endpoint} call: {description or code}"),
            error_code=scrub(code), error_message=scrub(description),
            http_status=answer.status, http_body=scrub(answer.text[:1000]))
    return error_for(endpoint, answer, scrub)


def read_register_urls(answer: Answer, scrub: Scrub) -> UrlsRegistered:
    body = answer.body
    code = _text(body.get("ResponseCode")) if body else None
    description = _text(body.get("ResponseDescription")) if body else None
    if code == "0":
        return UrlsRegistered(
            originator_conversation_id=_text(body.get("OriginatorCoversationID")
                                             or body.get("OriginatorConversationID")),
            response_description=description or "", raw=body)
    raise _refused("c2bregister", answer, scrub, code, description)


def read_register_pull(answer: Answer, scrub: Scrub) -> PullRegistered:
    body = answer.body
    status = _text(body.get("ResponseStatus")) if body else None
    description = _text(body.get("ResponseDescription")) if body else None
    if status in (_PULL_OK, _PULL_NOTHING):
        return PullRegistered(already=status == _PULL_NOTHING,
                              response_description=description or "", raw=body)
    raise _refused("pullregister", answer, scrub, status, description)


def read_pull(answer: Answer, scrub: Scrub) -> PullPage:
    body = answer.body
    code = _text(body.get("ResponseCode")) if body else None
    if code == _PULL_NOTHING:
        return PullPage(transactions=[], raw=body)
    if code == _PULL_OK:
        return PullPage(transactions=_rows(body), raw=body)
    raise _refused("pull", answer, scrub, code,
                   _text(body.get("ResponseMessage")) if body else None)


def _rows(body: dict) -> list:
    """The rows under ``Response`` (or ``Transaction``), flattened, each a dict with a
    ``transactionId``; a JSON string is read as JSON; anything else is left out."""
    found = []
    for key in ("Response", "Transaction", "Transactions"):
        value = body.get(key)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                continue
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            elif isinstance(item, dict) and item.get("transactionId") not in (None, ""):
                found.append(item)
        if found:
            break
    return found
