"""Reading Daraja's answers (OAuth, STK push, STK query): pure functions, no I/O.

Never trust the HTTP status alone: HTTP 200 with an error body or an HTML page has been seen,
and a pending query arrives as HTTP 500. The body decides first, the status second, and
anything not understood is ambiguous.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from daraja import errors

__all__ = ["Answer", "StkPushAccepted", "StkQueryResult", "TokenRefused",
           "read_oauth", "read_push", "read_query", "error_for", "PENDING_RESULT_CODE"]

PENDING_RESULT_CODE = "4999"

# Codes that mean "this access token is not (or no longer) valid": Daraja's 404.001.03, and
# the 400.003.01 and 401.002.01 of other Daraja products and of mocks.
_TOKEN_CODES = {"404.001.03", "400.003.01", "401.002.01"}
_OAUTH_CREDENTIAL_CODES = {"400.008.01", "400.008.02"}
_BODY_EXCERPT = 1000


@dataclass(frozen=True)
class StkPushAccepted:
    """Daraja accepted the push for processing: a prompt is on its way. Not paid!"""

    merchant_request_id: str | None
    checkout_request_id: str
    response_code: str
    response_description: str | None
    customer_message: str | None
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class StkQueryResult:
    """An STK query's answer. ``result_code`` is text ("0", "1032", "4999"…) or None when the
    answer was the older "being processed" error; ``pending`` means "ask again later"."""

    result_code: str | None
    result_desc: str
    pending: bool
    merchant_request_id: str | None
    checkout_request_id: str | None
    raw: dict = field(repr=False, compare=False)


@dataclass
class Answer:
    """One HTTP answer, as read off the wire."""

    status: int
    text: str
    headers: Any = None
    data: Any = None  # the parsed JSON, if the body was JSON

    @classmethod
    def parse(cls, status: int, text: str, headers: Any = None) -> "Answer":
        data = None
        stripped = (text or "").strip()
        if stripped[:1] in ("{", "["):
            try:
                data = json.loads(stripped)
            except ValueError:
                data = None
        return cls(status=status, text=text or "", headers=headers, data=data)

    @property
    def body(self) -> dict | None:
        return self.data if isinstance(self.data, dict) else None


class TokenRefused(Exception):
    """Internal signal: Daraja refused the access token; refresh once and retry once."""

    outcome = "invalid_token"

    def __init__(self, error: errors.DarajaError):
        super().__init__(str(error))
        self.error = error


Scrub = Callable[[str | None], str | None]


# -- shared reading -----------------------------------------------------------------------

def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _error_fields(body: dict | None) -> tuple[str | None, str | None, str | None]:
    """(errorCode, errorMessage, requestId) from a Daraja error body or a raw gateway fault."""
    if not body:
        return None, None, None
    code = _text(body.get("errorCode", body.get("errorcode")))
    message = _text(body.get("errorMessage", body.get("errormessage")))
    request_id = _text(body.get("requestId", body.get("requestID")))
    fault = body.get("fault")
    if isinstance(fault, dict):
        message = message or _text(fault.get("faultstring"))
        detail = fault.get("detail")
        if isinstance(detail, dict):
            code = code or _text(detail.get("errorcode"))
    return code, message, request_id


def _retry_after(answer: Answer, default: float) -> float:
    value = None
    if answer.headers is not None:
        try:
            value = answer.headers.get("Retry-After")
        except AttributeError:
            value = None
    try:
        return max(1.0, float(value)) if value is not None else default
    except ValueError:
        return default


def _error(cls, message: str, answer: Answer, scrub: Scrub, code=None, error_message=None,
           request_id=None, **extra) -> errors.DarajaError:
    return cls(scrub(message), error_code=scrub(code), error_message=scrub(error_message),
               http_status=answer.status, request_id=scrub(request_id),
               http_body=scrub(answer.text[:_BODY_EXCERPT]), **extra)


def _classify(endpoint: str, answer: Answer, scrub: Scrub) -> errors.DarajaError | TokenRefused:
    """The error an answer that is not a success stands for:
    the first of the rule families below that recognises it, else an ambiguous answer."""
    code, message, request_id = _error_fields(answer.body)
    if code is None and message is None:
        return _classify_status_only(endpoint, answer, scrub)
    said = _Said(endpoint, answer, code or "", (code or "").lower(), (message or "").lower())

    def make(cls, what: str, **extra):
        return _error(cls, what, answer, scrub, code, message, request_id, **extra)

    for rules in (_authorisation, _unknown_checkout_request, _merchant_error, _throttling,
                  _code_family):
        found = rules(said, make)
        if found is not None:
            return found
    return make(errors.AmbiguousResponse, "Daraja answered an error this client does not know")


@dataclass(frozen=True)
class _Said:
    """What an error answer said, as the rules read it."""
    endpoint: str
    answer: Answer
    code: str
    code_l: str
    text: str


def _authorisation(said: _Said, make):
    """The app, its credentials or its access token refused."""
    if said.code == "401.003.01" or "no apiproduct match" in said.text:
        # the app lacks the API product: a 401 that no fresh token will cure
        return make(errors.ConfigurationError, "the Daraja app lacks this API product")
    if said.endpoint == "oauth":
        if said.code in _OAUTH_CREDENTIAL_CODES or said.answer.status in (400, 401):
            return make(errors.AuthenticationError, "Daraja refused the OAuth credentials")
    elif (said.answer.status == 401 or "invalid access token" in said.text
          or said.code in _TOKEN_CODES or "invalid_access_token" in said.code_l
          or "access token expired" in said.text):
        return TokenRefused(make(errors.InvalidAccessToken, "Daraja refused the access token"))
    if said.code in _OAUTH_CREDENTIAL_CODES:
        return make(errors.AuthenticationError, "Daraja refused the OAuth credentials")
    return None


def _unknown_checkout_request(said: _Said, make):
    text = said.text
    if "checkoutrequestid" in text and ("invalid" in text or "not found" in text
                                        or "does not exist" in text):
        if said.endpoint == "stkquery":
            return make(errors.UnknownCheckoutRequest,
                        "Daraja does not know this CheckoutRequestID")
        return make(errors.RequestRejected, "Daraja rejected the request")
    return None


def _merchant_error(said: _Said, make):
    """``500.001.1001`` means four different things: branch on the message."""
    if said.code != "500.001.1001":
        return None
    if "lock subscriber" in said.text:
        return make(errors.Throttled, "the phone already has a prompt open", retry_after=60.0)
    if "merchant does not exist" in said.text:
        return make(errors.ConfigurationError, "Daraja does not know this merchant")
    if "wrong credentials" in said.text:
        return make(errors.ConfigurationError,
                    "Daraja refused the Password (shortcode, passkey or timestamp)")
    return make(errors.AmbiguousResponse, "Daraja answered 500.001.1001 with an unknown message")


def _throttling(said: _Said, make):
    if said.code_l.endswith("http.flow.serviceunavailable"):
        # Daraja's API proxy could not reach M-Pesa's back end: the request stopped there, so
        # nothing was sent (unlike its GatewayTimeout, where the back end got it: ambiguous)
        return make(errors.Throttled, "Daraja's gateway could not reach M-Pesa (not sent)",
                    retry_after=_retry_after(said.answer, 10.0))
    if (said.code == "500.003.02" or "spike arrest" in said.text
            or "spikearrest" in said.code_l or "system is busy" in said.text):
        return make(errors.Throttled, "Daraja is busy (spike arrest)",
                    retry_after=_retry_after(said.answer, 10.0))
    if (said.code == "500.003.03" or "quota violation" in said.text
            or "quotaviolation" in said.code_l):
        return make(errors.Throttled, "Daraja quota exceeded",
                    retry_after=_retry_after(said.answer, 30.0))
    return None


def _code_family(said: _Said, make):
    """What is left, by the errorCode's family."""
    if said.code == "500.003.1001":
        return make(errors.AmbiguousResponse, "Daraja answered Internal Server Error")
    if said.code_l.startswith(("404.", "405.")):
        return make(errors.ConfigurationError, "Daraja does not serve this resource or method")
    if said.code_l.startswith("401."):
        return make(errors.ConfigurationError, "Daraja refused the app's authorisation")
    if said.code_l.startswith("400."):
        return make(errors.RequestRejected, "Daraja rejected the request")
    return None


def _classify_status_only(endpoint: str, answer: Answer,
                          scrub: Scrub) -> errors.DarajaError | TokenRefused:
    """No usable error body (empty, HTML, SOAP, unexpected JSON): the status is all we have."""
    status = answer.status

    def make(cls, what: str, **extra):
        return _error(cls, what, answer, scrub, **extra)

    if endpoint == "oauth" and status in (400, 401):
        return make(errors.AuthenticationError, "Daraja refused the OAuth credentials")
    if status == 401:
        return TokenRefused(make(errors.InvalidAccessToken, "Daraja refused the access token"))
    if status in (404, 405):
        return make(errors.ConfigurationError, "Daraja does not serve this resource or method")
    if status == 429:
        return make(errors.Throttled, "Daraja is rate limiting",
                    retry_after=_retry_after(answer, 15.0))
    if status == 400:
        return make(errors.RequestRejected, "Daraja rejected the request")
    kind = "an empty body" if not answer.text.strip() else (
        "JSON it did not expect" if answer.data is not None else "a body that is not JSON")
    return make(errors.AmbiguousResponse, f"Daraja answered HTTP {status} with {kind}")


# -- per endpoint ---------------------------------------------------------------------------

def read_oauth(answer: Answer, scrub: Scrub) -> tuple[str, float]:
    """``(access_token, expires_in)``; ``expires_in`` may come as a string or a number."""
    body = answer.body
    token = body.get("access_token") if body else None
    if isinstance(token, str) and token.strip():
        return token.strip(), _expires_in(body.get("expires_in"))
    error = _classify("oauth", answer, scrub)
    if isinstance(error, errors.AmbiguousResponse):
        # nothing but a token was asked for: safe to ask again, and no business request left
        error = _error(errors.TokenUnavailable,
                       f"no access token in the OAuth answer: {error.message}", answer, scrub,
                       error.error_code, error.error_message, error.request_id)
    if isinstance(error, TokenRefused):  # not reachable for oauth, kept for safety
        error = error.error
    raise error


def _expires_in(value: Any, default: float = 3599.0) -> float:
    try:
        seconds = float(str(value).strip())
    except (TypeError, ValueError):
        return default
    if seconds != seconds or seconds <= 0:  # NaN or nonsense
        return default
    return seconds


def read_push(answer: Answer, scrub: Scrub) -> StkPushAccepted:
    body = answer.body
    if body is not None and "errorCode" not in body and "fault" not in body:
        code = _text(body.get("ResponseCode"))
        checkout = _text(body.get("CheckoutRequestID"))
        if code == "0" and checkout:
            return StkPushAccepted(
                merchant_request_id=_text(body.get("MerchantRequestID")),
                checkout_request_id=checkout, response_code=code,
                response_description=_text(body.get("ResponseDescription")),
                customer_message=_text(body.get("CustomerMessage")), raw=body)
        if code is not None or checkout is not None:
            # a push answer that is neither an acceptance nor a known error
            raise _error(errors.AmbiguousResponse,
                         f"Daraja answered the push with ResponseCode {code!r}", answer, scrub,
                         code, _text(body.get("ResponseDescription")))
    raise error_for("stkpush", answer, scrub)


def read_query(answer: Answer, scrub: Scrub) -> StkQueryResult:
    body = answer.body
    if body is not None and "errorCode" not in body and "fault" not in body:
        if "ResultCode" in body and body.get("ResultCode") is not None:
            result_code = _text(body.get("ResultCode"))
            return StkQueryResult(
                result_code=result_code, result_desc=_text(body.get("ResultDesc")) or "",
                pending=result_code == PENDING_RESULT_CODE,
                merchant_request_id=_text(body.get("MerchantRequestID")),
                checkout_request_id=_text(body.get("CheckoutRequestID")), raw=body)
        if _text(body.get("ResponseCode")) == "0":
            # accepted, but no result yet: ask again later
            return StkQueryResult(
                result_code=None, result_desc=_text(body.get("ResponseDescription")) or "",
                pending=True, merchant_request_id=_text(body.get("MerchantRequestID")),
                checkout_request_id=_text(body.get("CheckoutRequestID")), raw=body)
    code, message, _ = _error_fields(body)
    text = (message or "").lower()
    if code == "500.001.1001" and ("being processed" in text or "under processing" in text):
        # the older "still pending" form (HTTP 500)
        return StkQueryResult(result_code=None, result_desc=message or "", pending=True,
                              merchant_request_id=None, checkout_request_id=None, raw=body or {})
    raise error_for("stkquery", answer, scrub)


def error_for(endpoint: str, answer: Answer, scrub: Scrub) -> Exception:
    """The error (to raise) an answer that is not a success stands for, by the rules every
    endpoint shares (the readers above, and those of :mod:`daraja.c2b`)."""
    return _classify(endpoint, answer, scrub)
