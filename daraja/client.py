"""The Daraja client: OAuth, STK push, STK query, over one pooled ``requests.Session``.

The client never retries on its own, with one exception: an answer that refuses the access
token (any 401 but ``401.003.01``, or an errorMessage containing "Invalid Access Token")
invalidates that token in the shared cache, fetches a fresh one and retries the call ONCE.
That is safe even for a push, because such an answer means nothing was processed. Every other
decision is the caller's, made on the error's ``retryable`` and ``may_have_been_processed``.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import http.cookiejar
import inspect
import logging
import re
import time
from typing import Any, Callable

import requests
import requests.auth
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from daraja import answers, c2b, errors
from daraja.answers import StkPushAccepted, StkQueryResult
from daraja.config import DarajaConfig
from daraja.security import NAIROBI, Scrubber, mask_phone, nairobi_timestamp, stk_password
from daraja.tokens import MemoryTokenCache
from daraja.urls import refused_word

__all__ = ["DarajaClient", "OAUTH_PATH", "STK_PUSH_PATH", "STK_QUERY_PATH", "C2B_REGISTER_PATH",
           "PULL_REGISTER_PATH", "PULL_QUERY_PATH"]

log = logging.getLogger("daraja.client")

OAUTH_PATH = "/oauth/v1/generate?grant_type=client_credentials"
STK_PUSH_PATH = "/mpesa/stkpush/v1/processrequest"
STK_QUERY_PATH = "/mpesa/stkpushquery/v1/query"
C2B_REGISTER_PATH = "/mpesa/c2b/v2/registerurl"
PULL_REGISTER_PATH = "/pulltransactions/v1/register"
PULL_QUERY_PATH = "/pulltransactions/v1/query"

ACCOUNT_REFERENCE_MAX = 12
TRANSACTION_DESC_MAX = 13
DEFAULT_DESCRIPTION = "Top-up"
_PHONE = re.compile(r"254\d{9}")

OnCall = Callable[[str, str, float], None]


class BearerToken(requests.auth.AuthBase):
    """The ``Authorization: Bearer`` header of a call made with an access token."""

    def __init__(self, token: str):
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


def new_session(pool_maxsize: int = 16) -> requests.Session:
    """The client's session: requests' own, with three choices made through its public knobs.

    - It never retries by itself (urllib3 would happily re-send a POST): ``max_retries=0``.
    - It keeps no cookies: the client needs none, and a cookie one answer set would go out
      with every later call of the process. A cookie policy that accepts none.
    - ``trust_env`` stays on, so each call takes its proxy (``HTTPS_PROXY``, ``NO_PROXY``…)
      and CA bundle (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) from the environment as
      requests does. The one thing ``trust_env`` would also bring, credentials from
      ``~/.netrc`` replacing the client's own, never happens: every call passes its ``auth=``.
    """
    session = requests.Session()
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_maxsize, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class DarajaClient:
    """``DarajaClient(cfg, token_cache=RedisTokenCache(redis), session=None, clock=time.time,
    on_call=None)``.

    ``token_cache`` defaults to a :class:`MemoryTokenCache`, which is right for one process
    only: a fleet must share a :class:`RedisTokenCache`. ``clock`` gives Unix time (Timestamp,
    token expiry). ``on_call(endpoint, outcome, seconds)`` is told about every HTTP call:
    endpoint in {"oauth", "stkpush", "stkquery", "c2bregister", "pullregister", "pull"}, outcome
    "ok", "pending" (query), "invalid_token"
    (answered by a refresh and one retry) or the error class's ``outcome`` label
    ("connection_failed", "ambiguous", "throttled", …). Exceptions from the hook are logged and
    ignored. Thread-safe: share one client between a process's threads.
    """

    def __init__(self, config: DarajaConfig, token_cache=None,
                 session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time, on_call: OnCall | None = None):
        self.config = config
        self._cache = token_cache if token_cache is not None else MemoryTokenCache()
        self._session = session if session is not None else new_session()
        self._clock = clock
        self._on_call = on_call
        self._timeout = (config.connect_timeout, config.read_timeout)
        self._basic_auth = requests.auth.HTTPBasicAuth(config.consumer_key.encode("utf-8"),
                                                       config.consumer_secret.encode("utf-8"))
        # What that Authorization header carries, never to be shown if an answer echoes it.
        basic = base64.b64encode(
            f"{config.consumer_key}:{config.consumer_secret}".encode("utf-8")).decode("ascii")
        self._scrub = Scrubber(config.consumer_secret, config.passkey, basic)
        # A duck-typed cache may implement only get(fetch, now) / invalidate(token).
        self._cache_kwargs = _accepts(self._cache.get, "margin_s", "scope")
        self._invalidate_kwargs = _accepts(self._cache.invalidate, "scope")

    def __repr__(self) -> str:
        cfg = self.config
        return f"DarajaClient(base_url={cfg.base_url!r}, shortcode={cfg.shortcode!r})"

    # -- public -------------------------------------------------------------------------

    def access_token(self) -> str:
        """A valid access token, from the shared cache or (one process at a time) from OAuth."""
        kwargs = ({"margin_s": self.config.token_margin_s, "scope": self.config.token_scope}
                  if self._cache_kwargs else {})
        try:
            return self._cache.get(self._fetch_token, self._clock(), **kwargs)
        except errors.DarajaError:
            raise
        except Exception as exc:  # the cache's store (Redis) failed: nothing was sent
            raise errors.TokenUnavailable(
                f"the token cache failed: {type(exc).__name__}") from exc

    def stk_push(self, *, amount: int, phone: str, account_reference: str,
                 description: str = DEFAULT_DESCRIPTION) -> StkPushAccepted:
        """Ask Daraja to prompt ``phone`` to pay ``amount`` shillings. Accepted is not paid."""
        amount = _whole_shillings(amount)
        phone = _msisdn(phone)
        reference = _account_reference(account_reference)
        description = _description(description)
        cfg = self.config
        timestamp = nairobi_timestamp(self._clock())  # one per request, in both fields
        password = stk_password(cfg.shortcode, cfg.passkey, timestamp)
        body = {
            "BusinessShortCode": int(cfg.shortcode),
            "Password": password,
            "Timestamp": timestamp,
            "TransactionType": cfg.transaction_type,
            "Amount": amount,
            "PartyA": phone,
            "PartyB": cfg.business_party_b,
            "PhoneNumber": phone,
            "CallBackURL": cfg.callback_url,
            "AccountReference": reference,
            "TransactionDesc": description,
        }
        context = {"phone": mask_phone(phone), "amount": amount, "account_reference": reference}
        accepted = self._authorized("stkpush", STK_PUSH_PATH, body, answers.read_push,
                                    secrets=(password,), context=context)
        # DEBUG: the caller logs the accepted push with what it is about (workers.tasks
        # writes "push accepted" with these fields and the top-up's id); at INFO this was a
        # second line for the same event in every worker, relayed by Dramatiq's parent.
        log.debug("stk push accepted phone=%s amount=%s checkout_request_id=%s",
                  mask_phone(phone), amount, accepted.checkout_request_id,
                  extra={**context, "checkout_request_id": accepted.checkout_request_id})
        return accepted

    def stk_query(self, checkout_request_id: str) -> StkQueryResult:
        """Ask Daraja what became of a push. Safe to repeat (a query changes nothing)."""
        checkout_request_id = (checkout_request_id or "").strip()
        if not checkout_request_id:
            raise errors.InvalidRequest("checkout_request_id is required")
        cfg = self.config
        timestamp = nairobi_timestamp(self._clock())
        password = stk_password(cfg.shortcode, cfg.passkey, timestamp)
        body = {
            "BusinessShortCode": cfg.shortcode,
            "Password": password,
            "Timestamp": timestamp,
            "CheckoutRequestID": checkout_request_id,
        }
        context = {"checkout_request_id": checkout_request_id}
        result = self._authorized("stkquery", STK_QUERY_PATH, body, answers.read_query,
                                  secrets=(password,), context=context)
        if result.checkout_request_id is None:
            result = dataclasses.replace(result, checkout_request_id=checkout_request_id)
        log.info("stk query checkout_request_id=%s result_code=%s pending=%s",
                 checkout_request_id, result.result_code, result.pending,
                 extra={**context, "result_code": result.result_code, "pending": result.pending})
        return result

    # -- paybill (C2B) -------------------------------------------------------------------

    def register_c2b_urls(self, *, shortcode: str, confirmation_url: str, validation_url: str,
                          response_type: str = "Completed") -> c2b.UrlsRegistered:
        """Register the paybill's confirmation and validation URLs (C2B v2). ``response_type``
        (``Completed`` or ``Cancelled``) is what Daraja does with a payment when the
        validation URL cannot be reached. A URL holding a word Daraja refuses is refused
        here, before anything is sent."""
        if response_type not in c2b.RESPONSE_TYPES:
            raise errors.InvalidRequest(
                f"response_type must be one of {', '.join(c2b.RESPONSE_TYPES)}")
        _daraja_url("ConfirmationURL", confirmation_url)
        _daraja_url("ValidationURL", validation_url)
        body = {"ShortCode": _shortcode(shortcode), "ResponseType": response_type,
                "ConfirmationURL": confirmation_url, "ValidationURL": validation_url}
        return self._authorized("c2bregister", C2B_REGISTER_PATH, body, c2b.read_register_urls,
                                secrets=(), context={"shortcode": body["ShortCode"]})

    def register_pull(self, *, shortcode: str, nominated_number: str,
                      callback_url: str) -> c2b.PullRegistered:
        """Register the paybill for Pull Transactions, once (a second time answers that it is
        registered already: ``already``)."""
        _daraja_url("CallBackURL", callback_url)
        phone = _msisdn(nominated_number)
        body = {"ShortCode": _shortcode(shortcode), "RequestType": "Pull",
                "NominatedNumber": phone, "CallBackURL": callback_url}
        return self._authorized("pullregister", PULL_REGISTER_PATH, body,
                                c2b.read_register_pull, secrets=(),
                                context={"shortcode": body["ShortCode"],
                                         "phone": mask_phone(phone)})

    def pull_transactions(self, *, shortcode: str, start: datetime.datetime,
                          end: datetime.datetime, offset: int = 0) -> c2b.PullPage:
        """One page of the paybill's payments between ``start`` and ``end`` (naive UTC, or
        aware; sent in Nairobi time as Daraja wants), from record ``offset`` on. Daraja keeps
        the last 48 hours. Safe to repeat: a pull changes nothing."""
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise errors.InvalidRequest("offset must be a whole number of records")
        body = {"ShortCode": _shortcode(shortcode), "StartDate": _nairobi_date(start),
                "EndDate": _nairobi_date(end), "OffSetValue": str(offset)}
        page = self._authorized("pull", PULL_QUERY_PATH, body, c2b.read_pull, secrets=(),
                                context={"shortcode": body["ShortCode"], "offset": offset})
        log.info("pull transactions offset=%s rows=%s", offset, len(page.transactions),
                 extra={"offset": offset, "rows": len(page.transactions)})
        return page

    # -- internals ------------------------------------------------------------------------

    def _authorized(self, endpoint: str, path: str, body: dict, read, *, secrets: tuple,
                    context: dict):
        token = self.access_token()
        for attempt in (1, 2):
            try:
                return self._call(endpoint, "POST", path, read, json_body=body,
                                  auth=BearerToken(token),
                                  secrets=secrets + (token,), context=context)
            except answers.TokenRefused as refused:
                self._invalidate(token)
                if attempt == 2:
                    error = refused.error
                    log.warning("daraja %s: access token refused again after a refresh: %s",
                                endpoint, error, extra={**context, "endpoint": endpoint})
                    raise errors.InvalidAccessToken(
                        "Daraja refused the access token twice, even after a refresh",
                        error_code=error.error_code, error_message=error.error_message,
                        http_status=error.http_status, request_id=error.request_id,
                        http_body=error.http_body) from None
                log.info("daraja %s: access token refused, refreshing once", endpoint,
                         extra={**context, "endpoint": endpoint})
                token = self.access_token()
        raise AssertionError("unreachable")

    def _invalidate(self, token: str) -> None:
        try:
            if self._invalidate_kwargs:
                self._cache.invalidate(token, scope=self.config.token_scope)
            else:
                self._cache.invalidate(token)
        except Exception as exc:
            raise errors.TokenUnavailable(
                f"the token cache failed: {type(exc).__name__}") from exc

    def _fetch_token(self) -> tuple[str, float]:
        """The OAuth call itself (called by the cache, under its refresh lock)."""
        token, expires_in = self._call("oauth", "GET", OAUTH_PATH, answers.read_oauth,
                                       auth=self._basic_auth,
                                       secrets=(), context={})
        log.info("daraja oauth: new access token, expires in %ss", int(expires_in))
        return token, expires_in

    def _call(self, endpoint: str, method: str, path: str, read, *, auth: requests.auth.AuthBase,
              json_body: dict | None = None, secrets: tuple, context: dict) -> Any:
        scrub = self._scrub.with_secrets(*secrets)
        started = time.monotonic()
        try:
            # requests sets Content-Type: application/json for a json= body
            response = self._session.request(
                method, self.config.base_url + path, headers={"Accept": "application/json"},
                json=json_body, auth=auth, timeout=self._timeout, allow_redirects=False)
            text = response.content.decode("utf-8", errors="replace")
        except requests.RequestException as exc:
            error = _transport_error(endpoint, exc)
            self._report(endpoint, error.outcome, started)
            log.warning("daraja %s failed: %s", endpoint, error,
                        extra={**context, "endpoint": endpoint, "error": type(error).__name__})
            raise error from exc
        answer = answers.Answer.parse(response.status_code, text, response.headers)
        try:
            result = read(answer, scrub)
        except answers.TokenRefused:
            self._report(endpoint, answers.TokenRefused.outcome, started)
            raise
        except errors.DarajaError as error:
            self._report(endpoint, error.outcome, started)
            log.warning("daraja %s failed: %s: %s", endpoint, type(error).__name__, error,
                        extra={**context, "endpoint": endpoint, "error": type(error).__name__,
                               "error_code": error.error_code})
            raise
        outcome = "pending" if getattr(result, "pending", False) else "ok"
        self._report(endpoint, outcome, started)
        return result

    def _report(self, endpoint: str, outcome: str, started: float) -> None:
        if self._on_call is None:
            return
        try:
            self._on_call(endpoint, outcome, time.monotonic() - started)
        except Exception:
            log.exception("daraja on_call hook failed")


# -- transport errors -------------------------------------------------------------------------

def _transport_error(endpoint: str, exc: requests.RequestException) -> errors.DarajaError:
    """Requests' exception → ours. Only a failure to connect is 'certainly not sent'."""
    name = type(exc).__name__
    if isinstance(exc, requests.exceptions.ConnectTimeout) or _failed_to_connect(exc):
        return errors.ConnectionFailed(f"could not connect to Daraja ({endpoint}): {_reason(exc)}")
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader)):
        return errors.ConfigurationError(f"cannot call Daraja ({endpoint}): {name}")
    if isinstance(exc, requests.exceptions.ReadTimeout):
        what = "no answer within the read timeout"
    else:
        what = f"the answer was lost: {_reason(exc)}"
    if endpoint == "oauth":  # only a token was asked for: safe to ask again
        return errors.TokenUnavailable(f"Daraja OAuth: {what}")
    return errors.AmbiguousResponse(f"Daraja {endpoint}: {what}")


def _causes(exc: BaseException):
    seen = set()
    stack = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen or not isinstance(item, BaseException):
            continue
        seen.add(id(item))
        yield item
        stack.extend(a for a in getattr(item, "args", ()) if isinstance(a, BaseException))
        stack.append(getattr(item, "reason", None))
        stack.append(item.__cause__)
        stack.append(item.__context__)


def _failed_to_connect(exc: BaseException) -> bool:
    return any(isinstance(e, (urllib3.exceptions.NewConnectionError,
                              urllib3.exceptions.ConnectTimeoutError))
               for e in _causes(exc))


def _reason(exc: BaseException) -> str:
    """The innermost cause's class name (no URLs, headers or bodies)."""
    names = [type(e).__name__ for e in _causes(exc)]
    return names[-1] if names else type(exc).__name__


# -- validation before sending -------------------------------------------------------------------

def _whole_shillings(amount: Any) -> int:
    if isinstance(amount, bool):
        raise errors.InvalidRequest("amount must be a whole number of shillings")
    try:
        whole = int(amount)
        if whole != amount:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise errors.InvalidRequest("amount must be a whole number of shillings") from None
    if whole < 1:
        raise errors.InvalidRequest("amount must be at least 1 shilling")
    return whole


def _msisdn(phone: Any) -> str:
    text = str(phone or "").strip()
    if not _PHONE.fullmatch(text):
        raise errors.InvalidRequest(f"phone must be 254XXXXXXXXX, got {mask_phone(text)!r}")
    return text


def _shortcode(shortcode: Any) -> str:
    text = str(shortcode or "").strip()
    if not text.isdigit() or not 5 <= len(text) <= 7:
        raise errors.InvalidRequest("shortcode must be 5 to 7 digits")
    return text


def _daraja_url(name: str, url: Any) -> None:
    text = str(url or "")
    if not text.lower().startswith(("https://", "http://")) or any(c.isspace() for c in text):
        raise errors.InvalidRequest(f"{name} must be an http(s) URL without spaces")
    word = refused_word(text)
    if word is not None:
        raise errors.InvalidRequest(f"{name} contains {word!r}, which Daraja refuses in a URL")


def _nairobi_date(when: Any) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in Nairobi time; a naive datetime is UTC."""
    if not isinstance(when, datetime.datetime):
        raise errors.InvalidRequest("start and end must be datetimes")
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone(NAIROBI).strftime("%Y-%m-%d %H:%M:%S")


def _account_reference(reference: Any) -> str:
    text = str(reference or "").strip()
    if not text:
        raise errors.InvalidRequest("account_reference is required")
    if len(text) > ACCOUNT_REFERENCE_MAX:
        # not truncated: the statement's "A/C No." must match what the ledger holds
        raise errors.InvalidRequest(
            f"account_reference must be at most {ACCOUNT_REFERENCE_MAX} characters")
    return text


def _description(description: Any) -> str:
    text = str(description or "").strip() or DEFAULT_DESCRIPTION
    return text[:TRANSACTION_DESC_MAX].rstrip() or DEFAULT_DESCRIPTION


def _accepts(fn, *names: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(name in params for name in names)
