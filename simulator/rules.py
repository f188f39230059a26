"""Daraja's rules as the simulator applies them: validation, wording, codes, magic phones.

Everything here is a pure function of its arguments (no state, no I/O), worded byte for byte
as Daraja answers (simulator/README.md lists them).
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

EAT = timezone(timedelta(hours=3), "EAT")  # Africa/Nairobi: UTC+3, no DST
TIMESTAMP_FORMAT = "%Y%m%d%H%M%S"
TIMESTAMP_WINDOW = timedelta(minutes=5)

TRANSACTION_TYPES = frozenset({"CustomerPayBillOnline", "CustomerBuyGoodsOnline"})
MAX_AMOUNT = 250_000
MAX_ACCOUNT_REFERENCE = 12
MAX_TRANSACTION_DESC = 13
# Daraja refuses a CallBackURL containing any of these, in any case
FORBIDDEN_IN_CALLBACK_URL = ("mpesa", "m-pesa", "safaricom", "exe", "exec", "cmd", "sql", "query")

_SHORTCODE = re.compile(r"[0-9]{5,7}")
_TIMESTAMP = re.compile(r"[0-9]{14}")
_PHONE = re.compile(r"254[17][0-9]{8}")
_DIGITS = re.compile(r"[0-9]{1,20}")
_WHOLE = re.compile(r"[0-9]{1,7}")
_WHITESPACE = re.compile(r"\s")


class DarajaError(Exception):
    """A refusal worded as Daraja words it: HTTP status, errorCode, errorMessage."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code} {message}")
        self.status = status
        self.code = code
        self.message = message


def status_for(error_code: str) -> int:
    """The HTTP status Daraja pairs with an errorCode: its first three digits."""
    head = error_code.split(".", 1)[0]
    if head.isdigit() and 400 <= int(head) <= 599:
        return int(head)
    return 500


def bad_request(what: str) -> DarajaError:
    return DarajaError(400, "400.002.02", f"Bad Request - Invalid {what}")


def merchant_error(message: str) -> DarajaError:
    return DarajaError(500, "500.001.1001", message)


INVALID_TOKEN = DarajaError(404, "404.001.03", "Invalid Access Token")
INVALID_GRANT_TYPE = DarajaError(400, "400.008.02", "Invalid grant type passed")
INVALID_AUTH_TYPE = DarajaError(400, "400.008.01", "Invalid Authentication passed")
RESOURCE_NOT_FOUND = DarajaError(404, "404.001.01", "Resource not found")
METHOD_NOT_ALLOWED = DarajaError(405, "405.001", "Method Not Allowed")
INTERNAL_ERROR = DarajaError(500, "500.003.1001", "Internal Server Error")
SUBSCRIBER_LOCKED = merchant_error(
    "Unable to lock subscriber, a transaction is already in process for the current subscriber")

ACCEPTED = "Success. Request accepted for processing"
QUERY_ACCEPTED = "The service request has been accepted successfully"
PENDING_CODE = "4999"
PENDING_DESC = "The transaction is still under processing"
PENDING_500 = "The transaction is being processed"

GATEWAY_FAULT = {"fault": {"faultstring": "Spike arrest violation. Allowed rate : 5ps",
                           "detail": {"errorcode": "policies.ratelimit.SpikeArrestViolation"}}}
HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Request Rejected</title></head>"
             b"<body><h1>Request Rejected</h1><p>The requested URL was rejected. Please "
             b"consult with your administrator.</p></body></html>\n")

# ResultCode -> ResultDesc, as Daraja words them
RESULT_DESCS = {
    0: "The service request is processed successfully.",
    1: "The balance is insufficient for the transaction.",
    2: "Declined due to limit rule: less than the minimum transaction amount.",
    3: "Declined due to limit rule: greater than the maximum transaction amount.",
    4: "Declined due to limit rule: would exceed daily transfer limit.",
    8: "Declined due to limit rule: would exceed the maximum balance.",
    17: "Rule limited.",
    1001: "Unable to lock subscriber, a transaction is already in process for the current "
          "subscriber",
    1019: "Transaction has expired",
    1025: "An error occurred while sending a push request",
    1031: "Request cancelled by user",
    1032: "Request cancelled by user",
    1036: "SMSC ACK timeout.",
    1037: "DS timeout user cannot be reached",
    2001: "The initiator information is invalid.",
    2028: "The request is not permitted according to product assignment.",
    8006: "The security credential is locked",
    9999: "An error occurred while sending a push request",
}
RANDOM_FAILURE_CODES = (1, 1032, 1037, 2001)  # what failure_rate draws from

# The sandbox's test phone: it pays at once, also when other phones wait for a person.
TEST_PHONE = "254708374149"
# What a customer can do with a prompt on the phone (GET /phone), and the ResultCode it gives.
PROMPT_ANSWERS = {"pay": 0, "cancel": 1032, "wrong_pin": 2001, "timeout": 1037, "no_money": 1}
_PIN = re.compile(r"[0-9]{4}")


def valid_pin(pin) -> bool:
    """Any four digits: the simulator's customer has no PIN of their own."""
    return isinstance(pin, str) and bool(_PIN.fullmatch(pin))


def result_desc(code: int) -> str:
    return RESULT_DESCS.get(code, f"Undocumented result code {code} (simulator)")


# --- magic phones -------------------------------------------------------------------------

RESULT_PREFIX = "25470000"     # + CCCC: the ResultCode
BEHAVIOUR_PREFIX = "25470001"  # + SSSS: a successful payment with a quirk
REFUSAL_PREFIX = "25470002"    # + NNNN: the push refused outright

BEHAVIOURS = {
    "0001": "no_callback",
    "0002": "duplicate_callback",
    "0003": "callback_five_times",
    "0004": "late_callback",
    "0005": "callback_before_answer",
    "0006": "html_answer",
    "0007": "gateway_fault",
    "0008": "slow_answer",
    "0009": "internal_error",
    "0010": "query_pending",
    "0011": "query_pending_500",
    "0012": "amount_mismatch",
}
BEHAVIOUR_NAMES = frozenset(BEHAVIOURS.values())

REFUSALS = {
    "0001": bad_request("PhoneNumber"),
    "0002": bad_request("Amount"),
    "0003": merchant_error("Merchant does not exist"),
    "0004": merchant_error("Wrong credentials"),
    "0005": SUBSCRIBER_LOCKED,
    "0006": DarajaError(500, "500.003.02", "System is busy. Please try again in few minutes."),
    "0007": DarajaError(500, "500.003.02", "Spike Arrest Violation"),
    "0008": DarajaError(500, "500.003.03", "Quota Violation"),
    "0009": RESOURCE_NOT_FOUND,
    "0010": DarajaError(401, "401.003.01", "Invalid API call as no apiproduct match found"),
}


@dataclass(frozen=True, slots=True)
class PhonePlan:
    """What a phone number decides: a ResultCode, a behaviour, or a refusal."""
    result_code: int = 0
    behaviour: str | None = None
    refusal: DarajaError | None = None
    magic: bool = False


ORDINARY = PhonePlan()


def plan_for_phone(phone: str) -> PhonePlan:
    prefix, tail = phone[:8], phone[8:]
    if prefix == RESULT_PREFIX:
        return PhonePlan(result_code=int(tail), magic=True)
    if prefix == BEHAVIOUR_PREFIX and tail in BEHAVIOURS:
        return PhonePlan(behaviour=BEHAVIOURS[tail], magic=True)
    if prefix == REFUSAL_PREFIX and tail in REFUSALS:
        return PhonePlan(refusal=REFUSALS[tail], magic=True)
    return ORDINARY


def parse_fault(name) -> tuple[str, object]:
    """A fault name of POST /__sim/faults -> ("behaviour", name) or ("refuse", DarajaError)."""
    if not isinstance(name, str):
        raise ValueError("fault must be a string")
    if name in BEHAVIOUR_NAMES:
        return "behaviour", name
    if name.startswith("refuse:"):
        parts = name.split(":", 2)
        if len(parts) == 3 and parts[1] and parts[2]:
            return "refuse", DarajaError(status_for(parts[1]), parts[1], parts[2])
        raise ValueError('a refusal is "refuse:<errorCode>:<errorMessage>"')
    raise ValueError(f"unknown fault {name!r}: one of {', '.join(sorted(BEHAVIOUR_NAMES))}, "
                     "refuse:<errorCode>:<errorMessage>, expire_token_early; for paybill "
                     "payments drop_confirmation, duplicate_confirmation, "
                     "validation_unreachable")


# --- requests -----------------------------------------------------------------------------

def parse_json_object(content_type: str | None, body: bytes) -> dict:
    """The request's JSON object; anything else is Daraja's "Invalid BusinessShortCode"."""
    if "application/json" not in (content_type or "").lower():
        raise bad_request("BusinessShortCode")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("BusinessShortCode") from None
    if not isinstance(payload, dict):
        raise bad_request("BusinessShortCode")
    return payload


def _text(value) -> str | None:
    """A string field that Daraja also accepts as a JSON number."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _matches(pattern: re.Pattern, value) -> str | None:
    text = _text(value)
    if text is not None and pattern.fullmatch(text):
        return text
    return None


def parse_shortcode(value) -> str | None:
    """A BusinessShortCode: 5 to 7 digits, as a string or a JSON number."""
    return _matches(_SHORTCODE, value)


def parse_phone(value) -> str | None:
    """A phone as Daraja takes it: ``2547…`` or ``2541…``, as a string or a JSON number."""
    return _matches(_PHONE, value)


def parse_timestamp(value) -> tuple[str, datetime] | None:
    text = _matches(_TIMESTAMP, value)
    if text is None:
        return None
    try:
        return text, datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=EAT)
    except ValueError:
        return None


def parse_amount(value) -> int | None:
    """Whole shillings 1..250000, as a JSON integer or a string of digits; no decimals."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str) and _WHOLE.fullmatch(value):
        amount = int(value)
    else:
        return None
    return amount if 1 <= amount <= MAX_AMOUNT else None


def valid_callback_url(url, require_https: bool) -> bool:
    if not isinstance(url, str) or not url:
        return False
    lower = url.lower()
    if not lower.startswith("https://") and (require_https or not lower.startswith("http://")):
        return False
    if _WHITESPACE.search(url):   # \s is str.isspace(), in one C loop
        return False
    if any(word in lower for word in FORBIDDEN_IN_CALLBACK_URL):
        return False
    try:
        return bool(urlsplit(url).hostname)
    except ValueError:
        return False


@dataclass(slots=True)
class Push:
    shortcode: str
    password: object
    timestamp: str
    timestamp_at: datetime
    transaction_type: str
    amount: int
    party_a: str
    party_b: str
    phone: str
    callback_url: str
    account_reference: str
    description: str


def validate_push(payload: dict, require_https: bool) -> Push:
    """The push's fields, checked for form in Daraja's order (400.002.02 on the first fault)."""
    shortcode = parse_shortcode(payload.get("BusinessShortCode"))
    if shortcode is None:
        raise bad_request("BusinessShortCode")
    stamp = parse_timestamp(payload.get("Timestamp"))
    if stamp is None:
        raise bad_request("Timestamp")
    transaction_type = payload.get("TransactionType")
    if transaction_type not in TRANSACTION_TYPES:
        raise bad_request("TransactionType")
    amount = parse_amount(payload.get("Amount"))
    if amount is None:
        raise bad_request("Amount")
    party_a = _matches(_PHONE, payload.get("PartyA"))
    if party_a is None:
        raise bad_request("PhoneNumber")
    party_b = _matches(_DIGITS, payload.get("PartyB"))
    if party_b is None:
        raise bad_request("PartyB")
    phone = _matches(_PHONE, payload.get("PhoneNumber"))
    if phone is None:
        raise bad_request("PhoneNumber")
    callback_url = payload.get("CallBackURL")
    if not valid_callback_url(callback_url, require_https):
        raise bad_request("CallBackURL")
    reference = _text(payload.get("AccountReference"))
    if reference is None or not 1 <= len(reference) <= MAX_ACCOUNT_REFERENCE:
        raise bad_request("AccountReference")
    description = _text(payload.get("TransactionDesc"))
    if description is None or not 1 <= len(description) <= MAX_TRANSACTION_DESC:
        raise bad_request("Remarks")
    return Push(shortcode, payload.get("Password"), stamp[0], stamp[1], transaction_type,
                amount, party_a, party_b, phone, callback_url, reference, description)


def password_for(shortcode: str, passkey: str, timestamp: str) -> str:
    return base64.b64encode(f"{shortcode}{passkey}{timestamp}".encode()).decode()


def check_credentials(shortcode: str, password, timestamp: str, timestamp_at: datetime,
                      merchant_shortcode: str, passkey: str, now: datetime) -> None:
    """The merchant checks (500.001.1001), after the form checks as on Daraja.

    A timestamp more than five minutes from Nairobi's clock is "Wrong credentials": that is
    how a server stamping in UTC meets Daraja.
    """
    if shortcode != merchant_shortcode:
        raise merchant_error("Merchant does not exist")
    expected = password_for(shortcode, passkey, timestamp).encode()
    given = password.encode("utf-8", "replace") if isinstance(password, str) else b""
    if not hmac.compare_digest(given, expected):
        raise merchant_error("Wrong credentials")
    if abs(now - timestamp_at) > TIMESTAMP_WINDOW:
        raise merchant_error("Wrong credentials")


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """(key, secret) from ``Basic base64(key:secret)``; None when it is not Basic at all.

    A Basic header that does not decode gives ("", "") so that it fails as bad credentials.
    """
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return "", ""
    key, sep, secret = decoded.partition(":")
    return (key, secret) if sep else ("", "")


def bearer_token(authorization: str | None) -> str | None:
    if not authorization or authorization[:7].lower() != "bearer ":
        return None
    return authorization[7:].strip() or None


# --- answers ------------------------------------------------------------------------------

def eat_stamp(when: datetime) -> int:
    """A TransactionDate: the number YYYYMMDDHHmmss in Nairobi time."""
    return int(when.astimezone(EAT).strftime(TIMESTAMP_FORMAT))


_AMOUNT_SLOT = "\x00amount\x00"


def callback_body(merchant_request_id: str, checkout_request_id: str, result_code: int,
                  desc: str, amount: int | None = None, decimal_amount: bool = False,
                  receipt: str | None = None, transaction_date: int | None = None,
                  phone: str | None = None) -> bytes:
    """The stkCallback POSTed to the CallBackURL: with CallbackMetadata when paid.

    ``decimal_amount`` writes the amount as Daraja sometimes does, ``1000.00``; otherwise
    ``1000``. Balance comes without a Value, as it usually does.
    """
    callback = {"MerchantRequestID": merchant_request_id,
                "CheckoutRequestID": checkout_request_id,
                "ResultCode": result_code, "ResultDesc": desc}
    if result_code == 0:
        callback["CallbackMetadata"] = {"Item": [
            {"Name": "Amount", "Value": _AMOUNT_SLOT},
            {"Name": "MpesaReceiptNumber", "Value": receipt},
            {"Name": "Balance"},
            {"Name": "TransactionDate", "Value": transaction_date},
            {"Name": "PhoneNumber", "Value": int(phone)},
        ]}
    text = json.dumps({"Body": {"stkCallback": callback}})
    if result_code == 0:
        literal = f"{amount}.00" if decimal_amount else str(amount)
        text = text.replace(json.dumps(_AMOUNT_SLOT), literal, 1)
    return text.encode()


def mask_phone(phone: str) -> str:
    """2547****5678: enough to tell numbers apart in a log, not enough to call them."""
    if len(phone) >= 8:
        return phone[:4] + "****" + phone[-4:]
    return "****"


def origin(url: str) -> str:
    """scheme://host[:port] of a URL: the callback URL's path holds the gateway's secret."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    except ValueError:
        return "<unparsable URL>"
