"""Reading Daraja's STK callback body, defensively.

Items are read as a name → value map, never by position (``Balance`` often comes without a
``Value`` and shifts the others); ResultCode may be a number or a string; Amount may be
``1.00`` or ``1``; PhoneNumber is a number.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation


class MalformedCallback(ValueError):
    pass


# M-Pesa's largest single payment (KES 250,000), in cents: a callback claiming more is not
# M-Pesa's, and would not fit every column that carries an amount.
MAX_PAYMENT_CENTS = 250_000 * 100
_RECEIPT = re.compile(r"[A-Za-z0-9]{1,32}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
        result_desc=_printable(str(cb.get("ResultDesc") or ""))[:255],
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


def _printable(text: str) -> str:
    return _CONTROL.sub(" ", text)


def why_unappliable(cb: StkCallback) -> str | None:
    """Why a paid callback cannot be credited as it stands, or None when it can.

    Such a callback is kept with this reason for an operator (quarantined) rather than tried
    again for ever: it parses, but it is not what M-Pesa sends, and the columns it would be
    written to refuse it (an amount beyond any payment, a receipt with a NUL in it)."""
    if cb.amount_cents is not None and cb.amount_cents > MAX_PAYMENT_CENTS:
        return "amount above M-Pesa's largest payment"
    if cb.receipt is not None and not _RECEIPT.fullmatch(cb.receipt):
        return "receipt is not letters and digits"
    if cb.phone is not None and _CONTROL.search(cb.phone):
        return "phone has control characters"
    return None
