"""The simulated Daraja's paybill side (C2B): URL registration, customer payments (validation,
then confirmation, to the registered URLs), Pull Transactions, and their faults.

:class:`Paybill` belongs to one :class:`~simulator.engine.Daraja` and shares its tokens, its
receipts (one receipt for one payment, however it is reported), its clock and its callback
threads. Like the engine it knows nothing of HTTP: each endpoint is a method that returns a
:class:`~simulator.engine.Reply`.

A payment, from the customer's phone (``POST /__sim/c2b/pay``, or Daraja's sandbox
``POST /mpesa/c2b/v1/simulate``):

1. the registration for the paybill is looked up (no URLs registered: refused);
2. the validation URL is asked (every value a string, the phone masked as C2B v2 masks it,
   ``2547 ***** 126``, or whole for a v1 registration). ``"ResultCode": "0"`` goes on; any
   other code refuses the payment (nothing is paid); no usable answer (refused connection,
   timeout, an error status, not JSON) leaves it to the registration's ``ResponseType``:
   ``Completed`` goes on, ``Cancelled`` cancels the payment;
3. the payment is paid: it is on Pull Transactions and on the statement from now on;
4. the confirmation is posted to the confirmation URL, once (faults: dropped, or twice).

With ``c2b_echo_stk`` (``"before"`` or ``"after"``), every paid STK push is also reported as a
C2B confirmation whose BillRefNumber is the push's AccountReference and whose TransID is the
STK receipt, a little before or after its STK callback would be: what Daraja does on some
paybills.
"""
from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

import requests

from . import ids, rules
from .callbacks import post_json

MAX_AMOUNT_CENTS = rules.MAX_AMOUNT * 100
LOOKBACK = timedelta(hours=48)              # what Pull Transactions keeps
ECHO_SPACING_S = 0.1                        # an echo this long before or after its callback
PULL_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
FAULTS = frozenset({"drop_confirmation", "duplicate_confirmation", "validation_unreachable"})
RESPONSE_TYPES = ("Completed", "Cancelled")
COMMANDS = ("CustomerPayBillOnline", "CustomerBuyGoodsOnline")
SIMULATE_ACCEPTED = "Accept the service request successfully."


@dataclass(frozen=True)
class Registration:
    shortcode: str
    response_type: str
    confirmation_url: str
    validation_url: str
    version: str                            # "v1" (MSISDN whole) or "v2" (masked)


@dataclass(eq=False)
class Payment:
    receipt: str
    shortcode: str
    amount_cents: int
    bill_ref: str
    phone: str
    paid_at: datetime                       # aware, UTC
    source: str                             # "c2b" (a customer) or "stk_echo"
    status: str = "pending"                 # paid | refused | cancelled
    validation: str | None = None           # "0", a refusal code, "unreachable", "skipped"
    confirmations_delivered: int = 0
    confirmation_failures: int = 0
    last_confirmation: str | None = None    # HTTP status, an error's name, or "dropped"
    checkout_request_id: str | None = None  # an echo's push

    @property
    def paid(self) -> bool:
        return self.status == "paid"

    def amount_text(self) -> str:
        return f"{self.amount_cents // 100}.{self.amount_cents % 100:02d}"

    def body(self, version: str, balance_cents: int = 0) -> bytes:
        """The validation and confirmation body: every value a string."""
        eat = self.paid_at.astimezone(rules.EAT)
        phone = (f"{self.phone[:4]} ***** {self.phone[-3:]}" if version == "v2" else self.phone)
        return json.dumps({
            "TransactionType": "Pay Bill", "TransID": self.receipt,
            "TransTime": eat.strftime(rules.TIMESTAMP_FORMAT), "TransAmount": self.amount_text(),
            "BusinessShortCode": self.shortcode, "BillRefNumber": self.bill_ref,
            "InvoiceNumber": "", "OrgAccountBalance": f"{balance_cents / 100:.2f}",
            "ThirdPartyTransID": "", "MSISDN": phone, "FirstName": "SIM",
            "MiddleName": "", "LastName": f"CUSTOMER {self.phone[-4:]}"}).encode()

    def pulled(self) -> dict:
        """How Pull Transactions lists it."""
        return {"transactionId": self.receipt,
                "trxDate": self.paid_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "msisdn": int(self.phone), "sender": "SIM CUSTOMER",
                "transactiontype": "c2b-pay-bill-debit", "billreference": self.bill_ref,
                "amount": self.amount_text(), "organizationname": "SIMULATED PAYBILL"}

    def to_json(self) -> dict:
        return {"receipt": self.receipt, "shortcode": self.shortcode,
                "amount": self.amount_text(), "bill_ref_number": self.bill_ref,
                "phone": self.phone, "paid_at": self.paid_at.isoformat(timespec="seconds")
                .replace("+00:00", "Z"), "source": self.source, "status": self.status,
                "validation": self.validation,
                "confirmations_delivered": self.confirmations_delivered,
                "confirmation_failures": self.confirmation_failures,
                "last_confirmation": self.last_confirmation,
                "checkout_request_id": self.checkout_request_id}


class PaymentRefused(ValueError):
    """A payment the control endpoint cannot make (a bad amount or phone, no registration)."""


def parse_amount_cents(value) -> int | None:
    """Shillings as a number or a string (``100``, ``"99.50"``) → cents, 1 cent to 250,000."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        cents = Decimal(str(value).strip()) * 100
    except InvalidOperation:
        return None
    if not cents.is_finite() or cents != cents.to_integral_value():
        return None
    return int(cents) if 1 <= cents <= MAX_AMOUNT_CENTS else None


def ask_validation(url: str, body: bytes, timeout_s: float) -> str:
    """The validation URL's ResultCode as text, or ``unreachable`` when there is no usable
    answer (no connection, a timeout, an error status, a body without a ResultCode)."""
    session = requests.Session()
    session.trust_env = False
    try:
        answer = session.post(url, data=body, timeout=timeout_s,
                              headers={"Content-Type": "application/json",
                                       "User-Agent": "daraja-simulator"})
        data = answer.json() if 200 <= answer.status_code < 300 else None
    except (requests.RequestException, ValueError):
        return "unreachable"
    finally:
        session.close()
    if not isinstance(data, dict) or data.get("ResultCode") in (None, ""):
        return "unreachable"
    return str(data["ResultCode"]).strip()


class Paybill:
    """The C2B side of one simulated Daraja (``daraja.paybill``)."""

    def __init__(self, daraja):
        self._daraja = daraja
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._registrations: dict[str, Registration] = {}
            self._pull_registrations: dict[str, dict] = {}
            self._payments: dict[str, Payment] = {}
            self._faults: deque[list] = deque()     # [name, remaining]
            self._stats = {"c2b_payments": 0, "confirmations_sent": 0,
                           "confirmations_failed": 0, "pulls": 0}

    # --- control ------------------------------------------------------------------------------

    def queue_fault(self, name: str, count: int) -> None:
        with self._lock:
            self._faults.append([name, count])

    def faults(self) -> list[dict]:
        with self._lock:
            return [{"fault": name, "remaining": left} for name, left in self._faults]

    def _take_fault(self) -> str | None:
        with self._lock:
            if not self._faults:
                return None
            entry = self._faults[0]
            entry[1] -= 1
            if entry[1] <= 0:
                self._faults.popleft()
            return entry[0]

    def stats(self) -> dict:
        with self._lock:
            return dict(self._stats)

    def registrations(self) -> list[dict]:
        with self._lock:
            return [{"shortcode": r.shortcode, "response_type": r.response_type,
                     "confirmation_url": r.confirmation_url, "validation_url": r.validation_url,
                     "version": r.version} for r in self._registrations.values()]

    def payments(self) -> list[dict]:
        with self._lock:
            return [p.to_json() for p in self._payments.values()]

    def paid_payments(self) -> list[Payment]:
        """The customers' paid payments (an echo's payment is its STK transaction's)."""
        with self._lock:
            return [p for p in self._payments.values() if p.paid and p.source == "c2b"]

    # --- a customer pays ----------------------------------------------------------------------

    def pay(self, request: dict) -> dict:
        """``POST /__sim/c2b/pay {"account_number", "amount", "phone", "shortcode"}``: one
        payment from the customer's phone, validated and confirmed before this returns."""
        if not isinstance(request, dict):
            raise PaymentRefused("the body must be a JSON object")
        bill_ref = request.get("account_number")
        if not isinstance(bill_ref, str) or not 1 <= len(bill_ref.strip()) <= 20:
            raise PaymentRefused("account_number: 1 to 20 characters")
        cents = parse_amount_cents(request.get("amount"))
        if cents is None:
            raise PaymentRefused("amount: shillings from 0.01 to 250000, at most two decimals")
        phone = rules.parse_phone(request.get("phone", "254708374149"))
        if phone is None:
            raise PaymentRefused("phone: 2547XXXXXXXX or 2541XXXXXXXX")
        shortcode = rules.parse_shortcode(request.get("shortcode", self._daraja.config.shortcode))
        if shortcode is None:
            raise PaymentRefused("shortcode: 5 to 7 digits")
        with self._lock:
            registration = self._registrations.get(shortcode)
        if registration is None:
            raise PaymentRefused(f"no C2B URLs are registered for {shortcode}: register them "
                                 "first (topupctl daraja register-urls)")
        payment = self._new_payment(shortcode, cents, bill_ref.strip(), phone, "c2b")
        self._complete(payment, registration)
        return payment.to_json()

    def simulate(self, authorization: str | None, content_type: str | None, body: bytes):
        """``POST /mpesa/c2b/v1/simulate`` (the sandbox's): answered at once, the payment
        follows on a callback thread."""
        from .engine import json_reply
        if not self._daraja.token_ok(authorization):
            return self._daraja.error_reply(rules.INVALID_TOKEN)
        try:
            payload = rules.parse_json_object(content_type, body)
            shortcode = rules.parse_shortcode(payload.get("ShortCode"))
            if shortcode is None:
                raise rules.bad_request("ShortCode")
            if payload.get("CommandID") not in COMMANDS:
                raise rules.bad_request("CommandID")
            cents = parse_amount_cents(payload.get("Amount"))
            if cents is None:
                raise rules.bad_request("Amount")
            phone = rules.parse_phone(payload.get("Msisdn"))
            if phone is None:
                raise rules.bad_request("Msisdn")
            bill_ref = payload.get("BillRefNumber")
            if not isinstance(bill_ref, str) or not bill_ref.strip():
                raise rules.bad_request("BillRefNumber")
            with self._lock:
                registration = self._registrations.get(shortcode)
            if registration is None:
                raise rules.bad_request("ShortCode")
        except rules.DarajaError as error:
            return self._daraja.error_reply(error)
        payment = self._new_payment(shortcode, cents, bill_ref.strip(), phone, "c2b")
        self._daraja.scheduler.call_later(0.0, lambda: self._complete(payment, registration))
        return json_reply(200, {"OriginatorCoversationID": ids.conversation_id(),
                                "ResponseCode": "0", "ResponseDescription": SIMULATE_ACCEPTED})

    def _new_payment(self, shortcode, cents, bill_ref, phone, source, receipt=None,
                     paid_at=None) -> Payment:
        payment = Payment(receipt=receipt or self._daraja.new_receipt(), shortcode=shortcode,
                          amount_cents=cents, bill_ref=bill_ref, phone=phone,
                          paid_at=paid_at or datetime.fromtimestamp(self._daraja.wall(),
                                                                    timezone.utc),
                          source=source)
        with self._lock:
            self._payments[payment.receipt] = payment
            self._stats["c2b_payments"] += 1
            while len(self._payments) > self._daraja.config.max_transactions:
                self._payments.pop(next(iter(self._payments)))
        return payment

    def _complete(self, payment: Payment, registration: Registration) -> None:
        """Validation, then the confirmation (on the caller's thread)."""
        fault = self._take_fault()
        timeout = self._daraja.config.callback_timeout_s
        if payment.source == "stk_echo":
            verdict = "skipped"   # the push was paid already: nothing left to validate
        elif fault == "validation_unreachable":
            verdict = "unreachable"
        else:
            verdict = ask_validation(registration.validation_url,
                                     payment.body(registration.version), timeout)
        with self._lock:
            payment.validation = verdict
            if verdict == "unreachable" and registration.response_type == "Cancelled":
                payment.status = "cancelled"
            elif verdict not in ("0", "unreachable", "skipped"):
                payment.status = "refused"
            else:
                payment.status = "paid"
        if not payment.paid:
            return
        if fault == "drop_confirmation":
            with self._lock:
                payment.last_confirmation = "dropped"
            return
        for _ in range(2 if fault == "duplicate_confirmation" else 1):
            ok, detail = post_json(registration.confirmation_url,
                                   payment.body(registration.version), timeout)
            with self._lock:
                payment.last_confirmation = detail
                if ok:
                    payment.confirmations_delivered += 1
                    self._stats["confirmations_sent"] += 1
                else:
                    payment.confirmation_failures += 1
                    self._stats["confirmations_failed"] += 1

    # --- an STK payment reported as C2B too ---------------------------------------------------

    def echo(self, txn, callback_due: float) -> None:
        """Report a paid STK transaction as a C2B confirmation too, ``c2b_echo_stk`` before or
        after its callback is due (monotonic time), if its paybill has URLs registered."""
        when = self._daraja.config.c2b_echo_stk
        if when is None or txn.result_code != 0:
            return
        shortcode = self._daraja.config.shortcode
        with self._lock:
            registration = self._registrations.get(shortcode)
        if registration is None:
            return
        paid_at = datetime.strptime(str(txn.transaction_date), rules.TIMESTAMP_FORMAT).replace(
            tzinfo=rules.EAT).astimezone(timezone.utc)
        payment = self._new_payment(shortcode, txn.amount * 100, txn.account_reference,
                                    txn.phone, "stk_echo", receipt=txn.receipt, paid_at=paid_at)
        payment.checkout_request_id = txn.checkout_request_id
        due = callback_due + (ECHO_SPACING_S if when == "after" else -ECHO_SPACING_S)
        self._daraja.scheduler.call_at(due, lambda: self._complete(payment, registration))

    # --- Daraja's endpoints -------------------------------------------------------------------

    def register_urls(self, authorization: str | None, content_type: str | None, body: bytes,
                      version: str):
        """``POST /mpesa/c2b/v1|v2/registerurl``."""
        from .engine import json_reply
        if not self._daraja.token_ok(authorization):
            return self._daraja.error_reply(rules.INVALID_TOKEN)
        try:
            payload = rules.parse_json_object(content_type, body)
            shortcode = rules.parse_shortcode(payload.get("ShortCode"))
            if shortcode is None:
                raise rules.bad_request("ShortCode")
            response_type = payload.get("ResponseType")
            if response_type not in RESPONSE_TYPES:   # sentence case, as Daraja wants
                raise rules.bad_request("ResponseType")
            for name in ("ConfirmationURL", "ValidationURL"):
                if not rules.valid_callback_url(payload.get(name),
                                                self._daraja.config.require_https_callback):
                    raise rules.bad_request(name)
        except rules.DarajaError as error:
            return self._daraja.error_reply(error)
        with self._lock:
            self._registrations[shortcode] = Registration(
                shortcode, response_type, payload["ConfirmationURL"], payload["ValidationURL"],
                version)
        return json_reply(200, {"OriginatorCoversationID": ids.conversation_id(),
                                "ResponseCode": "0", "ResponseDescription": "Success"})

    def register_pull(self, authorization: str | None, content_type: str | None, body: bytes):
        """``POST /pulltransactions/v1/register``: ``1000``, then ``1001`` (registered)."""
        from .engine import json_reply
        if not self._daraja.token_ok(authorization):
            return self._daraja.error_reply(rules.INVALID_TOKEN)
        try:
            payload = rules.parse_json_object(content_type, body)
            shortcode = rules.parse_shortcode(payload.get("ShortCode"))
            if shortcode is None:
                raise rules.bad_request("ShortCode")
            if payload.get("RequestType") != "Pull":
                raise rules.bad_request("RequestType")
            if rules.parse_phone(payload.get("NominatedNumber")) is None:
                raise rules.bad_request("NominatedNumber")
            if not rules.valid_callback_url(payload.get("CallBackURL"),
                                            self._daraja.config.require_https_callback):
                raise rules.bad_request("CallBackURL")
        except rules.DarajaError as error:
            return self._daraja.error_reply(error)
        with self._lock:
            already = shortcode in self._pull_registrations
            self._pull_registrations.setdefault(shortcode, {
                "nominated_number": payload["NominatedNumber"],
                "callback_url": payload["CallBackURL"]})
        return json_reply(200, {
            "ResponseRefID": ids.conversation_id(), "ResponseStatus": "1001" if already
            else "1000", "ResponseDescription": "Shortcode already registered" if already
            else "Success"})

    def pull(self, authorization: str | None, content_type: str | None, body: bytes):
        """``POST /pulltransactions/v1/query``: every paid payment it has seen (customers' and
        STK pushes'), paid within [StartDate, EndDate] (Nairobi time) and the last 48 hours,
        oldest first, ``pull_page_size`` at a time from ``OffSetValue``."""
        from .engine import json_reply
        if not self._daraja.token_ok(authorization):
            return self._daraja.error_reply(rules.INVALID_TOKEN)
        try:
            payload = rules.parse_json_object(content_type, body)
            if rules.parse_shortcode(payload.get("ShortCode")) is None:
                raise rules.bad_request("ShortCode")
            start = _pull_date(payload.get("StartDate"), "StartDate")
            end = _pull_date(payload.get("EndDate"), "EndDate")
            offset = payload.get("OffSetValue", "0")
            if isinstance(offset, bool) or not str(offset).isdigit():
                raise rules.bad_request("OffSetValue")
            offset = int(offset)
        except rules.DarajaError as error:
            return self._daraja.error_reply(error)
        now = datetime.fromtimestamp(self._daraja.wall(), timezone.utc)
        start = max(start, now - LOOKBACK)
        # to the second, as Daraja records them: a payment in the window's last second is in it
        rows = sorted((item for item in self._everything_paid()
                       if start <= item[0].replace(microsecond=0) <= end),
                      key=lambda item: item[0])
        size = self._daraja.config.pull_page_size
        page = [row for _, row in rows[offset:offset + size]]
        with self._lock:
            self._stats["pulls"] += 1
        if not page:
            return json_reply(200, {"ResponseRefID": ids.conversation_id(),
                                    "ResponseCode": "1001", "ResponseMessage": "No records found",
                                    "Response": [[]]})
        return json_reply(200, {"ResponseRefID": ids.conversation_id(), "ResponseCode": "1000",
                                "ResponseMessage": "Success", "Response": [page]})

    def _everything_paid(self) -> list[tuple[datetime, dict]]:
        """(paid at, row) for the customers' paid payments and the paid STK transactions."""
        found = [(p.paid_at, p.pulled()) for p in self.paid_payments()]
        for txn in self._daraja.paid_transactions():
            paid_at = datetime.strptime(str(txn.transaction_date), rules.TIMESTAMP_FORMAT) \
                .replace(tzinfo=rules.EAT).astimezone(timezone.utc)
            found.append((paid_at, Payment(
                receipt=txn.receipt, shortcode=self._daraja.config.shortcode,
                amount_cents=txn.amount * 100, bill_ref=txn.account_reference, phone=txn.phone,
                paid_at=paid_at, source="stk").pulled()))
        return found


def _pull_date(value, name: str) -> datetime:
    """A Pull Transactions date, ``2020-08-04 8:36:00`` in Nairobi time, as aware UTC."""
    if not isinstance(value, str):
        raise rules.bad_request(name)
    try:
        when = datetime.strptime(value.strip(), PULL_DATE_FORMAT)
    except ValueError:
        raise rules.bad_request(name) from None
    return when.replace(tzinfo=rules.EAT).astimezone(timezone.utc)
