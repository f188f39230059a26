"""Reading Daraja's STK callback body (daraja.md §3), defensively.

Items are read as a name → value map, never by position (``Balance`` often comes without a
``Value`` and shifts the others); ResultCode may be a number or a string; Amount may be
``1.00`` or ``1``; PhoneNumber is a number.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation


class MalformedCallback(ValueError):
    pass


@dataclass(frozen=True)
class StkCallback:
    merchant_request_id: str | None
    checkout_request_id: str
    result_code: str
    result_desc: str
    amount_cents: int | None
    receipt: str | None
    phone: str | None
    transaction_date: str | None

    @property
    def paid(self) -> bool:
        return self.result_code == "0"


def parse(body: bytes | str | dict) -> StkCallback:
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested past the stack
            raise MalformedCallback("body is not JSON") from None
    if not isinstance(body, dict):
        raise MalformedCallback("body is not a JSON object")
    inner = body.get("Body")
    cb = inner.get("stkCallback") if isinstance(inner, dict) else None
    if not isinstance(cb, dict):
        raise MalformedCallback("Body.stkCallback is missing")
    checkout = cb.get("CheckoutRequestID")
    if not isinstance(checkout, str) or not checkout.strip() or len(checkout) > 128:
        raise MalformedCallback("Body.stkCallback.CheckoutRequestID is missing")
    code = cb.get("ResultCode")
    if isinstance(code, bool) or not isinstance(code, (int, str)) or str(code).strip() == "":
        raise MalformedCallback("Body.stkCallback.ResultCode is missing")
    if isinstance(code, float):
        raise MalformedCallback("Body.stkCallback.ResultCode is not a code")
    items = {}
    metadata = cb.get("CallbackMetadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("Item"), list):
        for item in metadata["Item"]:
            if isinstance(item, dict) and isinstance(item.get("Name"), str) and "Value" in item:
                items[item["Name"]] = item["Value"]
    merchant = cb.get("MerchantRequestID")
    return StkCallback(
        merchant_request_id=merchant if isinstance(merchant, str) else None,
        checkout_request_id=checkout.strip(),
        result_code=str(code).strip(),
        result_desc=str(cb.get("ResultDesc") or "")[:255],
        amount_cents=_cents(items.get("Amount")),
        receipt=_text(items.get("MpesaReceiptNumber"), 32),
        phone=_text(items.get("PhoneNumber"), 12),
        transaction_date=_text(items.get("TransactionDate"), 14),
    )


def _cents(value) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount < 0:
        return None
    return int((amount * 100).to_integral_value())


def _text(value, limit) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text[:limit] if text else None
