"""Daraja's failures, named by what the caller must do (after stripe-python's ``_error.py``).

Two class-level flags decide everything a caller needs:

``retryable``
    Trying the same call again later is safe and may succeed.
``may_have_been_processed``
    Daraja may have acted on the request. An STK push that failed with such an error must
    NEVER be sent again (the prompt may be on the customer's phone); a query may be repeated.

Hierarchy (retryable / may_have_been_processed)::

    DarajaError
    ├── ConnectionFailed            yes / no   refused, connect timeout, DNS: not sent
    ├── AmbiguousResponse           no / YES   answer lost or not understood
    ├── RequestRejected             no / no    400.x "Bad Request - Invalid X"
    │   ├── UnknownCheckoutRequest  no / no    query: "Invalid CheckoutRequestID"
    │   └── InvalidRequest          no / no    refused by this client, nothing sent
    ├── Throttled                   yes / no   busy, spike arrest, quota, phone busy;
    │                                          wait ``retry_after`` seconds
    ├── ConfigurationError          no / no    merchant, credentials, API product, URL
    │   └── AuthenticationError     no / no    OAuth refused the key/secret
    ├── InvalidAccessToken          yes / no   a token refused twice, even after a refresh
    └── TokenUnavailable            yes / no   no token could be had: the OAuth answer was
                                               lost or unreadable, the token cache failed,
                                               or the refresh lock stayed taken

Why ``TokenUnavailable`` is not an ``AmbiguousResponse``: a lost or unreadable *OAuth* answer
happens before the business request leaves, so ``stk_push`` has certainly not been sent;
fetching a token is safe to repeat. Reusing ``AmbiguousResponse`` there would make a caller
wrongly record a push as "possibly sent".

``str(error)`` never contains a secret (consumer secret, passkey, Password, tokens): the client
scrubs them from anything Daraja echoes before building an error.
"""
from __future__ import annotations

__all__ = [
    "DarajaError",
    "ConnectionFailed",
    "AmbiguousResponse",
    "RequestRejected",
    "UnknownCheckoutRequest",
    "InvalidRequest",
    "Throttled",
    "ConfigurationError",
    "AuthenticationError",
    "InvalidAccessToken",
    "TokenUnavailable",
]


class DarajaError(Exception):
    """Base class. Attributes describe Daraja's answer when there was one."""

    retryable: bool = False
    may_have_been_processed: bool = False
    #: a short label for metrics (the ``outcome`` given to ``on_call``)
    outcome: str = "error"

    def __init__(self, message: str | None = None, *, error_code: str | None = None,
                 error_message: str | None = None, http_status: int | None = None,
                 request_id: str | None = None, http_body: str | None = None):
        self.message = message or error_message or self.__class__.__name__
        self.error_code = error_code
        self.error_message = error_message
        self.http_status = http_status
        self.request_id = request_id
        #: the start of the answer's body (scrubbed of secrets), for debugging; not in str()
        self.http_body = http_body
        super().__init__(self.message)

    def __str__(self) -> str:
        details = []
        if self.error_code:
            details.append(f"errorCode {self.error_code}")
        if self.error_message and self.error_message != self.message:
            details.append(f"errorMessage {self.error_message!r}")
        if self.http_status is not None:
            details.append(f"HTTP {self.http_status}")
        if self.request_id:
            details.append(f"requestId {self.request_id}")
        return f"{self.message} ({', '.join(details)})" if details else self.message

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({str(self)!r})"

    def __reduce__(self):
        # keyword-only attributes survive pickling (Exception pickles only args)
        return (self.__class__, (self.message,), self.__dict__.copy())


class ConnectionFailed(DarajaError):
    """Could not connect (refused, connect timeout, name resolution): certainly not sent."""

    retryable = True
    may_have_been_processed = False
    outcome = "connection_failed"


class AmbiguousResponse(DarajaError):
    """The request may have reached Daraja but its answer was lost or not understood: read
    timeout, connection dropped mid-answer, ``500.003.1001``, HTML or SOAP where JSON was due,
    an error this client cannot classify. A query may be repeated; a push must not be."""

    retryable = False
    may_have_been_processed = True
    outcome = "ambiguous"


class RequestRejected(DarajaError):
    """Daraja refused the request and did nothing (``400.002.02 Bad Request - Invalid X``)."""

    retryable = False
    may_have_been_processed = False
    outcome = "rejected"


class UnknownCheckoutRequest(RequestRejected):
    """STK query: Daraja does not know this CheckoutRequestID."""

    outcome = "unknown_checkout_request"


class InvalidRequest(RequestRejected):
    """Refused by this client before sending (an amount with decimals, a malformed phone…)."""

    outcome = "invalid_request"


class Throttled(DarajaError):
    """Daraja is busy or rate limiting (``500.003.02``/``.03``, spike arrest), or the phone
    already has a prompt open ("Unable to lock subscriber"): nothing was done, try again after
    ``retry_after`` seconds."""

    retryable = True
    may_have_been_processed = False
    outcome = "throttled"
    default_retry_after: float = 15.0

    def __init__(self, message: str | None = None, *, retry_after: float | None = None, **kw):
        super().__init__(message, **kw)
        self.retry_after = float(retry_after if retry_after is not None
                                 else self.default_retry_after)


class ConfigurationError(DarajaError):
    """Our setup is wrong (merchant, passkey/credentials, API product, URL): a person must act."""

    retryable = False
    may_have_been_processed = False
    outcome = "configuration"


class AuthenticationError(ConfigurationError):
    """OAuth refused the consumer key/secret (HTTP 400 with an empty body, 400.008.01/02)."""

    outcome = "authentication"


class InvalidAccessToken(DarajaError):
    """A call was answered "Invalid Access Token" twice, before and after one refresh."""

    retryable = True
    may_have_been_processed = False
    outcome = "invalid_access_token"


class TokenUnavailable(DarajaError):
    """No access token could be obtained; the business request was not sent."""

    retryable = True
    may_have_been_processed = False
    outcome = "token_unavailable"
