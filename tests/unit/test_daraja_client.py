"""DarajaClient over real HTTP against a small fake Daraja (standard library only).

The fake answers as Daraja does, quirks included: it issues tokens, refuses
unknown ones with 404.001.03, and plays queued replies (any status, any body, slow, or a
connection dropped mid-answer) for the cases under test. The token cache is a RedisTokenCache
on fakeredis.
"""
from __future__ import annotations

import base64
import itertools
import json
import logging
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fakeredis
import pytest
import requests

from daraja import DarajaClient, DarajaConfig, MemoryTokenCache, RedisTokenCache, errors
from daraja.client import new_session
from daraja.security import nairobi_timestamp

SANDBOX_PASSKEY = "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919"
CONSUMER_KEY = "test-consumer-key"
CONSUMER_SECRET = "test-consumer-secret-0123"
PHONE = "254712345678"
NOW = 1782638648.0  # 2026-06-28 09:24:08 UTC → 12:24:08 in Nairobi

ACCEPTED = {"MerchantRequestID": "2654-4b64-97ff-b827b542881d3130",
            "CheckoutRequestID": "ws_CO_1007202409152617172396192",
            "ResponseCode": "0", "ResponseDescription": "Success. Request accepted for processing",
            "CustomerMessage": "Success. Request accepted for processing"}
QUERY_FINAL = {"ResponseCode": "0",
               "ResponseDescription": "The service request has been accepted successfully",
               "MerchantRequestID": "8555-67195-1", "CheckoutRequestID": "ws_CO_27072017151044001",
               "ResultCode": "1032", "ResultDesc": "[STK_CB - ]Request cancelled by user"}
HTML = "<html><head><title>Gateway</title></head><body>Something went wrong</body></html>"
SOAP = ('<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        "<soapenv:Body><soapenv:Fault><faultcode>soapenv:Server</faultcode>"
        "<faultstring>Internal Error</faultstring></soapenv:Fault></soapenv:Body>"
        "</soapenv:Envelope>")


def daraja_error(code, message, request_id="11559-988723-1"):
    return {"requestId": request_id, "errorCode": code, "errorMessage": message}


# -- the fake Daraja ------------------------------------------------------------------------

@dataclass
class Reply:
    status: int = 200
    body: Any = None                  # dict → JSON, str → as is, callable(request) → either
    content_type: str = "application/json"
    delay: float = 0.0
    drop: bool = False                # close the connection without answering
    truncate: bool = False            # promise more bytes than are sent, then close


@dataclass
class Seen:
    method: str
    path: str
    endpoint: str
    headers: dict
    raw: bytes
    json: Any = field(default=None)


class FakeDaraja:
    def __init__(self):
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.queued: dict[str, list[Reply]] = defaultdict(list)
        self.valid_tokens: set[str] = set()
        self.expires_in: Any = "3599"
        self.oauth_delay = 0.0
        self.query_reply = Reply(200, QUERY_FINAL)
        self.connections = 0
        self.cookie: str | None = None   # a Set-Cookie header on every answer
        self._serial = itertools.count(1)
        self.url = ""

    # scripting
    def queue(self, endpoint: str, *replies: Reply) -> None:
        with self.lock:
            self.queued[endpoint].extend(replies)

    def revoke_tokens(self) -> None:
        with self.lock:
            self.valid_tokens.clear()

    def calls(self, endpoint: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.endpoint == endpoint]

    # answering
    def answer(self, seen: Seen) -> Reply:
        with self.lock:
            self.seen.append(seen)
            if self.queued[seen.endpoint]:
                return self.queued[seen.endpoint].pop(0)
        if seen.endpoint == "oauth":
            return self._oauth(seen)
        if seen.endpoint == "unknown":
            return Reply(404, daraja_error("404.001.01", "Resource not found"))
        bearer = seen.headers.get("Authorization", "")
        with self.lock:
            token_ok = bearer.startswith("Bearer ") and bearer[7:] in self.valid_tokens
        if not token_ok:
            return Reply(404, daraja_error("404.001.03", "Invalid Access Token"))
        if seen.endpoint == "stkpush":
            return Reply(200, ACCEPTED)
        return self.query_reply

    def _oauth(self, seen: Seen) -> Reply:
        expected = "Basic " + base64.b64encode(
            f"{CONSUMER_KEY}:{CONSUMER_SECRET}".encode()).decode()
        if seen.headers.get("Authorization") != expected:
            return Reply(400, "", content_type="text/plain")
        if self.oauth_delay:   # a slow Daraja: the delay is the test's subject
            time.sleep(self.oauth_delay)
        token = f"tok{next(self._serial)}Xq9"
        with self.lock:
            self.valid_tokens.add(token)
        return Reply(200, {"access_token": token, "expires_in": self.expires_in})


ENDPOINTS = {"/oauth/v1/generate": "oauth", "/mpesa/stkpush/v1/processrequest": "stkpush",
             "/mpesa/stkpushquery/v1/query": "stkquery"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client's connection pooling shows
    disable_nagle_algorithm = True  # headers and body in one segment: no delayed-ACK stalls
    wbufsize = 1 << 16

    def setup(self):
        super().setup()
        with self.server.fake.lock:
            self.server.fake.connections += 1

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        seen = Seen(self.command, self.path, ENDPOINTS.get(path, "unknown"),
                    dict(self.headers.items()), raw)
        try:
            seen.json = json.loads(raw) if raw else None
        except ValueError:
            pass
        reply = self.server.fake.answer(seen)
        if reply.delay:   # a slow Daraja: the delay is the test's subject
            time.sleep(reply.delay)
        if reply.drop:
            self.close_connection = True
            return
        body = reply.body(seen) if callable(reply.body) else reply.body
        if isinstance(body, (dict, list)):
            payload = json.dumps(body).encode()
        else:
            payload = (body or "").encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(payload) + (50 if reply.truncate else 0)))
            if self.server.fake.cookie:
                self.send_header("Set-Cookie", self.server.fake.cookie)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:  # the client gave up (read timeout)
            pass
        if reply.truncate:
            self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # twenty clients connect at once: no resets from a full backlog


@pytest.fixture(scope="module")
def http_server():
    server = Server(("127.0.0.1", 0), Handler)
    server.fake = None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake(http_server):
    """A fresh fake Daraja per test, on the module's server."""
    daraja = FakeDaraja()
    daraja.url = f"http://127.0.0.1:{http_server.server_address[1]}"
    http_server.fake = daraja
    return daraja


@pytest.fixture
def redis_server():
    return fakeredis.FakeServer()


class Clock:
    def __init__(self, now=NOW):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def make_client(fake, redis_server, clock):
    sessions = []

    def make(*, cache=None, session=None, on_call=None, **overrides):
        fields = dict(base_url=fake.url, consumer_key=CONSUMER_KEY,
                      consumer_secret=CONSUMER_SECRET, shortcode="174379",
                      passkey=SANDBOX_PASSKEY, transaction_type="CustomerPayBillOnline",
                      party_b=None, callback_url="https://pay.example.com/daraja/callback/9f2c0a",
                      connect_timeout=3.05, read_timeout=5.0, token_margin_s=120)
        fields.update(overrides)
        if cache is None:
            cache = RedisTokenCache(fakeredis.FakeStrictRedis(server=redis_server))
        if session is None:
            session = new_session()   # what the client would make itself
        sessions.append(session)
        return DarajaClient(DarajaConfig(**fields), token_cache=cache, session=session,
                            clock=clock, on_call=on_call)

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def client(make_client):
    return make_client()


def push(client, **overrides):
    args = dict(amount=1000, phone=PHONE, account_reference="INV42", description="Top-up")
    args.update(overrides)
    return client.stk_push(**args)


# -- the push request ------------------------------------------------------------------------

def test_a_push_sends_the_documented_json_body(client, fake):
    push(client)
    (sent,) = fake.calls("stkpush")
    body = sent.json
    timestamp = nairobi_timestamp(NOW)
    assert timestamp == "20260628122408"
    assert body == {
        "BusinessShortCode": 174379, "Password": body["Password"], "Timestamp": timestamp,
        "TransactionType": "CustomerPayBillOnline", "Amount": 1000, "PartyA": PHONE,
        "PartyB": "174379", "PhoneNumber": PHONE,
        "CallBackURL": "https://pay.example.com/daraja/callback/9f2c0a",
        "AccountReference": "INV42", "TransactionDesc": "Top-up"}
    assert base64.b64decode(body["Password"]).decode() == "174379" + SANDBOX_PASSKEY + timestamp
    assert type(body["Amount"]) is int and type(body["BusinessShortCode"]) is int
    assert sent.method == "POST"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["Authorization"].startswith("Bearer tok")


def test_the_timestamp_is_nairobi_time_from_the_clients_clock(client, fake, clock):
    clock.now = 1624861448.0  # 2021-06-28 06:24:08 UTC
    push(client)
    body = fake.calls("stkpush")[0].json
    assert body["Timestamp"] == "20210628092408"
    assert body["Password"] == ("MTc0Mzc5YmZiMjc5ZjlhYTliZGJjZjE1OGU5N2RkNzFhNDY3Y2QyZTBjODkzMDU5"
                                "YjEwZjc4ZTZiNzJhZGExZWQyYzkxOTIwMjEwNjI4MDkyNDA4")


def test_a_till_push_sends_the_till_number_as_party_b(make_client, fake):
    push(make_client(transaction_type="CustomerBuyGoodsOnline", party_b="5566778"))
    body = fake.calls("stkpush")[0].json
    assert body["TransactionType"] == "CustomerBuyGoodsOnline"
    assert body["PartyB"] == "5566778" and body["BusinessShortCode"] == 174379


@pytest.mark.parametrize("description, sent", [
    ("Top-up", "Top-up"),
    ("Wallet top-up for March", "Wallet top-up"),
    ("", "Top-up"),
    (None, "Top-up"),
])
def test_the_description_is_always_sent_non_empty_and_at_most_13_characters(
        client, fake, description, sent):
    push(client, description=description)
    assert fake.calls("stkpush")[0].json["TransactionDesc"] == sent


@pytest.mark.parametrize("overrides", [
    {"amount": 10.5}, {"amount": 0}, {"amount": "100"}, {"amount": True},
    {"phone": "+254712345678"}, {"phone": "0712345678"},
    {"account_reference": "ABCDEFGHIJKLM"}, {"account_reference": ""},
])
def test_a_malformed_push_is_refused_before_anything_is_sent(client, fake, overrides):
    with pytest.raises(errors.InvalidRequest) as caught:
        push(client, **overrides)
    assert isinstance(caught.value, errors.RequestRejected)
    assert not caught.value.may_have_been_processed
    assert fake.calls("stkpush") == []


def test_an_accepted_push_returns_its_ids(client):
    accepted = push(client)
    assert accepted.checkout_request_id == "ws_CO_1007202409152617172396192"
    assert accepted.merchant_request_id == "2654-4b64-97ff-b827b542881d3130"
    assert accepted.response_code == "0"
    assert accepted.customer_message == "Success. Request accepted for processing"
    assert accepted.raw == ACCEPTED


def test_every_call_has_a_connect_and_read_timeout(make_client):
    class RecordingSession(requests.Session):
        timeouts = []

        def request(self, *args, **kwargs):
            self.timeouts.append(kwargs.get("timeout"))
            return super().request(*args, **kwargs)

    session = RecordingSession()
    client = make_client(session=session, connect_timeout=2.5, read_timeout=7.0)
    push(client)
    client.stk_query("ws_CO_1")
    assert session.timeouts == [(2.5, 7.0)] * 3  # oauth, push, query


def test_the_session_reuses_its_connection(client, fake):
    for _ in range(5):
        push(client)
    assert fake.connections == 1


# -- the token ------------------------------------------------------------------------------

@pytest.mark.parametrize("expires_in", ["3599", 3599, 3599.0])
def test_expires_in_is_accepted_as_a_string_or_a_number(make_client, fake, expires_in):
    fake.expires_in = expires_in
    cache = MemoryTokenCache()
    client = make_client(cache=cache)
    token = client.access_token()
    entry = cache.peek(scope=client.config.token_scope)
    assert entry["token"] == token
    assert entry["expires_at"] == pytest.approx(NOW + 3599, abs=1)


def test_many_calls_share_one_oauth_fetch(client, fake):
    for _ in range(5):
        push(client)
    for _ in range(3):
        client.stk_query("ws_CO_1")
    assert len(fake.calls("oauth")) == 1
    assert len({s.headers["Authorization"] for s in fake.calls("stkpush")}) == 1


def test_a_token_near_its_expiry_is_refreshed(client, fake, clock):
    push(client)
    clock.now = NOW + 3599 - 121
    push(client)
    assert len(fake.calls("oauth")) == 1
    clock.now = NOW + 3599 - 119
    push(client)
    assert len(fake.calls("oauth")) == 2


def test_two_processes_share_the_token_through_redis(make_client, fake):
    push(make_client())
    push(make_client())
    assert len(fake.calls("oauth")) == 1


def test_twenty_threads_with_a_cold_cache_fetch_the_token_exactly_once(make_client, fake):
    fake.oauth_delay = 0.3
    clients = [make_client() for _ in range(20)]  # twenty "processes", one Redis
    barrier = threading.Barrier(20)
    results, failures = [], []

    def work(client):
        barrier.wait()
        try:
            results.append(push(client).checkout_request_id)
        except Exception as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    assert failures == []
    assert len(results) == 20
    assert len(fake.calls("oauth")) == 1
    assert len(fake.calls("stkpush")) == 20


def test_other_credentials_never_reuse_the_cached_token(make_client, fake, redis_server):
    push(make_client())
    push(make_client(base_url=fake.url + "/"))  # the same app: the same cached token
    assert len(fake.calls("oauth")) == 1
    with pytest.raises(errors.AuthenticationError):  # another app fetches its own (refused here)
        push(make_client(consumer_key="another-app-key"))
    assert len(fake.calls("oauth")) == 2
    keys = fakeredis.FakeStrictRedis(server=redis_server).keys("topup:daraja:token:*")
    assert len(keys) == 1


def test_invalid_access_token_404_refreshes_the_token_and_retries_once(client, fake):
    push(client)
    fake.revoke_tokens()  # e.g. another app instance fetched a new one
    accepted = push(client)
    assert accepted.checkout_request_id == ACCEPTED["CheckoutRequestID"]
    assert len(fake.calls("oauth")) == 2
    pushes = fake.calls("stkpush")
    assert len(pushes) == 3
    assert pushes[1].headers["Authorization"] != pushes[2].headers["Authorization"]
    assert pushes[1].json == pushes[2].json  # the same request, one Timestamp


def test_a_plain_401_refreshes_the_token_and_retries_once(client, fake):
    client.access_token()
    fake.queue("stkpush", Reply(401, "", content_type="text/plain"))
    assert push(client).checkout_request_id == ACCEPTED["CheckoutRequestID"]
    assert len(fake.calls("oauth")) == 2
    assert len(fake.calls("stkpush")) == 2


def test_invalid_access_token_in_a_200_body_also_refreshes(client, fake):
    fake.queue("stkquery", Reply(200, daraja_error("404.001.03", "Invalid Access Token")))
    assert client.stk_query("ws_CO_1").result_code == "1032"
    assert len(fake.calls("oauth")) == 2


def test_a_token_refused_twice_raises_invalid_access_token(client, fake):
    refused = Reply(404, daraja_error("404.001.03", "Invalid Access Token"))
    fake.queue("stkpush", refused, refused)
    with pytest.raises(errors.InvalidAccessToken) as caught:
        push(client)
    assert caught.value.retryable and not caught.value.may_have_been_processed
    assert caught.value.error_code == "404.001.03"
    assert len(fake.calls("oauth")) == 2
    assert len(fake.calls("stkpush")) == 2


def test_no_apiproduct_match_is_a_configuration_error_without_a_refresh(client, fake):
    fake.queue("stkpush",
               Reply(401, daraja_error("401.003.01", "Error - no apiproduct match found")))
    with pytest.raises(errors.ConfigurationError):
        push(client)
    assert len(fake.calls("oauth")) == 1
    assert len(fake.calls("stkpush")) == 1


# -- OAuth failures --------------------------------------------------------------------------

def test_bad_consumer_credentials_raise_authentication_error_and_send_no_push(make_client, fake):
    client = make_client(consumer_secret="wrong-secret-value")
    with pytest.raises(errors.AuthenticationError) as caught:
        push(client)
    assert isinstance(caught.value, errors.ConfigurationError)
    assert not caught.value.retryable and caught.value.http_status == 400
    assert fake.calls("stkpush") == []


@pytest.mark.parametrize("code", ["400.008.01", "400.008.02"])
def test_wrong_grant_or_auth_type_is_an_authentication_error(client, fake, code):
    fake.queue("oauth", Reply(400, daraja_error(code, "Invalid grant type passed")))
    with pytest.raises(errors.AuthenticationError):
        client.access_token()


@pytest.mark.parametrize("reply", [
    Reply(200, HTML, content_type="text/html"),
    Reply(200, {"expires_in": "3599"}),
    Reply(503, HTML, content_type="text/html"),
    Reply(200, drop=True),
])
def test_an_oauth_answer_without_a_token_is_retryable_and_no_push_is_sent(client, fake, reply):
    fake.queue("oauth", reply)
    with pytest.raises(errors.TokenUnavailable) as caught:
        push(client)
    assert caught.value.retryable and not caught.value.may_have_been_processed
    assert fake.calls("stkpush") == []
    assert push(client).checkout_request_id  # the next attempt fetches a token


def test_a_broken_token_cache_is_retryable_and_sends_nothing(make_client, fake):
    class DownRedis:
        def get(self, key):
            raise ConnectionError("redis is down")

    with pytest.raises(errors.TokenUnavailable) as caught:
        push(make_client(cache=RedisTokenCache(DownRedis())))
    assert caught.value.retryable and not caught.value.may_have_been_processed
    assert fake.calls("stkpush") == []


def test_a_minimal_duck_typed_cache_is_accepted(make_client, fake):
    class TwoMethodCache:
        def __init__(self):
            self.token = None

        def get(self, fetch, now):
            if self.token is None:
                self.token = fetch()[0]
            return self.token

        def invalidate(self, token):
            if self.token == token:
                self.token = None

    client = make_client(cache=TwoMethodCache())
    push(client)
    fake.revoke_tokens()
    push(client)
    assert len(fake.calls("oauth")) == 2


# -- Daraja's refusals -----------------------------------------------------------------------------

E = errors
ERROR_ROWS = [
    *[pytest.param(400, daraja_error("400.002.02", f"Bad Request - Invalid {x}"), E.RequestRejected,
                   id=f"400.002.02 Invalid {x}")
      for x in ("BusinessShortCode", "Timestamp", "PhoneNumber", "Amount", "CallBackURL",
                "Remarks")],
    pytest.param(404, daraja_error("404.001.01", "Resource not found"), E.ConfigurationError,
                 id="404.001.01 Resource not found"),
    pytest.param(405, daraja_error("405.001", "Method Not Allowed"), E.ConfigurationError,
                 id="405.001 Method Not Allowed"),
    pytest.param(500, daraja_error("500.001.1001", "Merchant does not exist"), E.ConfigurationError,
                 id="500.001.1001 Merchant does not exist"),
    pytest.param(500, daraja_error("500.001.1001", "Wrong credentials"), E.ConfigurationError,
                 id="500.001.1001 Wrong credentials"),
    pytest.param(500, daraja_error("500.001.1001", "[MerchantValidate] - Wrong credentials"),
                 E.ConfigurationError, id="500.001.1001 [MerchantValidate] Wrong credentials"),
    pytest.param(500, daraja_error("500.001.1001", "Unable to lock subscriber, a transaction is "
                                   "already in process for the current subscriber"),
                 E.Throttled, id="500.001.1001 Unable to lock subscriber"),
    pytest.param(500,
                 daraja_error("500.003.02", "System is busy. Please try again in few minutes."),
                 E.Throttled, id="500.003.02 System is busy"),
    pytest.param(500, daraja_error("500.003.02", "Spike Arrest Violation"), E.Throttled,
                 id="500.003.02 Spike Arrest Violation"),
    pytest.param(500, daraja_error("500.003.03", "Quota Violation"), E.Throttled,
                 id="500.003.03 Quota Violation"),
    pytest.param(500, daraja_error("500.003.1001", "Internal Server Error"), E.AmbiguousResponse,
                 id="500.003.1001 Internal Server Error"),
    pytest.param(500, {"fault": {"faultstring": "Spike arrest violation. Allowed rate : MessageRate"
                                                "{messagesPerPeriod=5}",
                                 "detail": {"errorcode":
                                            "policies.ratelimit.SpikeArrestViolation"}}},
                 E.Throttled, id="raw gateway fault: spike arrest"),
    pytest.param(401, daraja_error("401.003.01", "Error - no apiproduct match found"),
                 E.ConfigurationError, id="401.003.01 no apiproduct match"),
    pytest.param(200, daraja_error("400.002.02", "Bad Request - Invalid Amount"), E.RequestRejected,
                 id="HTTP 200 with an error body"),
    pytest.param(500, daraja_error("500.001.1001", "Something nobody has seen"),
                 E.AmbiguousResponse,
                 id="500.001.1001 with an unknown message"),
    pytest.param(500, daraja_error("599.999.99", "New"), E.AmbiguousResponse, id="an unknown code"),
    pytest.param(200, HTML, E.AmbiguousResponse, id="HTTP 200 with HTML"),
    pytest.param(500, SOAP, E.AmbiguousResponse, id="a SOAP envelope"),
    pytest.param(200, SOAP, E.AmbiguousResponse, id="HTTP 200 with a SOAP envelope"),
    pytest.param(200, "", E.AmbiguousResponse, id="HTTP 200 with an empty body"),
    pytest.param(200, {}, E.AmbiguousResponse, id="HTTP 200 with an empty JSON object"),
    pytest.param(200, '{"ResponseCode": "0", "Checkout', E.AmbiguousResponse, id="truncated JSON"),
    pytest.param(200, {"ResponseCode": "1", "ResponseDescription": "Rejected"}, E.AmbiguousResponse,
                 id="a non-zero ResponseCode"),
    pytest.param(502, HTML, E.AmbiguousResponse, id="HTTP 502 from a proxy"),
    pytest.param(400, "", E.RequestRejected, id="HTTP 400 with an empty body"),
]

EXPECTED_FLAGS = {  # (retryable, may_have_been_processed)
    E.RequestRejected: (False, False), E.ConfigurationError: (False, False),
    E.Throttled: (True, False), E.AmbiguousResponse: (False, True),
}


@pytest.mark.parametrize("status, body, expected", ERROR_ROWS)
def test_each_refusal_of_a_push_maps_to_the_error_naming_what_to_do(
        client, fake, status, body, expected):
    content_type = "application/json" if isinstance(body, dict) else "text/html"
    fake.queue("stkpush", Reply(status, body, content_type=content_type))
    with pytest.raises(errors.DarajaError) as caught:
        push(client)
    error = caught.value
    assert type(error) is expected, str(error)
    assert (error.retryable, error.may_have_been_processed) == EXPECTED_FLAGS[expected]
    assert error.http_status == status
    if isinstance(body, dict) and "errorCode" in body:
        assert error.error_code == body["errorCode"]
        assert error.error_message == body["errorMessage"]
        assert error.request_id == body["requestId"]
    assert len(fake.calls("stkpush")) == 1  # never re-sent by the client


def test_a_busy_subscriber_is_retried_after_at_least_a_minute(client, fake):
    fake.queue("stkpush", Reply(500, daraja_error(
        "500.001.1001", "Unable to lock subscriber, a transaction is already in process "
                        "for the current subscriber")))
    with pytest.raises(errors.Throttled) as caught:
        push(client)
    assert caught.value.retry_after >= 60


@pytest.mark.parametrize("code", ["500.003.02", "500.003.03"])
def test_rate_limits_suggest_a_short_backoff(client, fake, code):
    fake.queue("stkpush", Reply(500, daraja_error(code, "Spike Arrest Violation")))
    with pytest.raises(errors.Throttled) as caught:
        push(client)
    assert 5 <= caught.value.retry_after <= 30


# -- transport failures ------------------------------------------------------------------------

def test_a_read_timeout_after_sending_is_ambiguous(make_client, fake):
    client = make_client(read_timeout=0.2)
    client.access_token()
    fake.queue("stkpush", Reply(200, ACCEPTED, delay=1.0))
    with pytest.raises(errors.AmbiguousResponse) as caught:
        push(client)
    assert caught.value.may_have_been_processed and not caught.value.retryable
    assert len(fake.calls("stkpush")) == 1


@pytest.mark.parametrize("reply", [Reply(200, drop=True), Reply(200, ACCEPTED, truncate=True)],
                         ids=["closed without an answer", "closed mid-body"])
def test_a_connection_dropped_mid_answer_is_ambiguous(client, fake, reply):
    client.access_token()
    fake.queue("stkpush", reply)
    with pytest.raises(errors.AmbiguousResponse):
        push(client)
    assert len(fake.calls("stkpush")) == 1


def test_a_refused_connection_is_connection_failed_and_retryable(make_client):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(base_url=f"http://127.0.0.1:{port}", connect_timeout=1.0)
    with pytest.raises(errors.ConnectionFailed) as caught:
        push(client)
    assert caught.value.retryable and not caught.value.may_have_been_processed


def test_a_refused_connection_during_the_push_itself_is_connection_failed(make_client):
    class FixedToken:
        def get(self, fetch, now):
            return "a-cached-token"

        def invalidate(self, token):
            pass

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(cache=FixedToken(), base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(errors.ConnectionFailed):
        push(client)


# -- STK query --------------------------------------------------------------------------------

def test_a_query_sends_the_documented_body(client, fake):
    client.stk_query("ws_CO_27072017151044001")
    body = fake.calls("stkquery")[0].json
    assert body["BusinessShortCode"] == "174379"
    assert body["CheckoutRequestID"] == "ws_CO_27072017151044001"
    assert body["Timestamp"] == nairobi_timestamp(NOW)
    decoded = base64.b64decode(body["Password"]).decode()
    assert decoded == "174379" + SANDBOX_PASSKEY + body["Timestamp"]


def test_a_final_query_answer_gives_its_result_code_as_text(client, fake):
    result = client.stk_query("ws_CO_27072017151044001")
    assert result.result_code == "1032" and result.pending is False
    assert result.result_desc == "[STK_CB - ]Request cancelled by user"
    assert result.merchant_request_id == "8555-67195-1"
    assert result.checkout_request_id == "ws_CO_27072017151044001"


def test_a_numeric_result_code_is_returned_as_text(client, fake):
    fake.query_reply = Reply(200, {**QUERY_FINAL, "ResultCode": 0,
                                   "ResultDesc": "The service request is processed successfully."})
    result = client.stk_query("ws_CO_27072017151044001")
    assert result.result_code == "0" and not result.pending


def test_a_query_still_under_processing_4999_is_pending(client, fake):
    fake.query_reply = Reply(200, {"ResultCode": "4999",
                                   "ResultDesc": "The transaction is still under processing"})
    result = client.stk_query("ws_CO_1")
    assert result.pending is True and result.result_code == "4999"
    assert result.checkout_request_id == "ws_CO_1"


def test_a_query_answered_500_being_processed_is_pending(client, fake):
    fake.query_reply = Reply(500, daraja_error("500.001.1001", "The transaction is being processed",
                                               request_id="ws_CO_1"))
    result = client.stk_query("ws_CO_1")
    assert result.pending is True and result.result_code is None
    assert result.result_desc == "The transaction is being processed"
    assert result.checkout_request_id == "ws_CO_1"


@pytest.mark.parametrize("reply", [
    Reply(400, daraja_error("400.002.02", "Bad Request - Invalid CheckoutRequestID")),
    Reply(500, daraja_error("500.001.1001", "Invalid CheckoutRequestID")),
])
def test_an_unknown_checkout_request_id_raises_unknown_checkout_request(client, fake, reply):
    fake.query_reply = reply
    with pytest.raises(errors.UnknownCheckoutRequest) as caught:
        client.stk_query("ws_CO_nobody")
    assert isinstance(caught.value, errors.RequestRejected)
    assert not caught.value.retryable and not caught.value.may_have_been_processed


def test_a_throttled_query_is_retryable(client, fake):
    fake.query_reply = Reply(500, daraja_error("500.003.02", "Spike Arrest Violation"))
    with pytest.raises(errors.Throttled):
        client.stk_query("ws_CO_1")


def test_a_query_answered_with_html_is_ambiguous(client, fake):
    fake.query_reply = Reply(200, HTML, content_type="text/html")
    with pytest.raises(errors.AmbiguousResponse):
        client.stk_query("ws_CO_1")


# -- secrets, logs, metrics ----------------------------------------------------------------------

def test_secrets_never_appear_in_errors_or_logs(client, fake, caplog):
    def echo_everything(seen):
        body = seen.json
        return daraja_error("400.002.02", f"Bad Request - Invalid Password {body['Password']} "
                                          f"with {seen.headers['Authorization']}")

    caplog.set_level(logging.DEBUG, logger="daraja")
    token = client.access_token()
    fake.queue("stkpush", Reply(400, echo_everything))
    with pytest.raises(errors.RequestRejected) as caught:
        push(client)
    error = caught.value
    password = fake.calls("stkpush")[0].json["Password"]
    basic = base64.b64encode(f"{CONSUMER_KEY}:{CONSUMER_SECRET}".encode()).decode()
    exposed = " ".join([str(error), repr(error), error.error_message or "", error.http_body or "",
                        caplog.text])
    for secret in (password, token, SANDBOX_PASSKEY, CONSUMER_SECRET, basic):
        assert secret not in exposed
    assert PHONE not in caplog.text


def test_log_lines_mask_the_phone_number(client, fake, caplog):
    caplog.set_level(logging.DEBUG, logger="daraja")  # the accepted push is a DEBUG line
    push(client)
    assert "2547****5678" in caplog.text
    assert PHONE not in caplog.text


def test_the_on_call_hook_hears_every_http_call(make_client, fake):
    heard = []
    client = make_client(
        on_call=lambda endpoint, outcome, seconds: heard.append((endpoint, outcome)))
    push(client)
    fake.queue("stkquery", Reply(500, daraja_error("500.003.03", "Quota Violation")))
    with pytest.raises(errors.Throttled):
        client.stk_query("ws_CO_1")
    fake.revoke_tokens()
    fake.query_reply = Reply(200, {"ResultCode": "4999", "ResultDesc": "still under processing"})
    client.stk_query("ws_CO_1")
    assert heard == [("oauth", "ok"), ("stkpush", "ok"), ("stkquery", "throttled"),
                     ("stkquery", "invalid_token"), ("oauth", "ok"), ("stkquery", "pending")]


def test_a_failing_on_call_hook_does_not_break_the_call(make_client):
    def broken(*args):
        raise RuntimeError("metrics backend down")

    assert push(make_client(on_call=broken)).checkout_request_id


def unused_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def no_proxy_in_the_environment(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_each_call_takes_its_proxy_from_the_environment(make_client, fake,
                                                        no_proxy_in_the_environment):
    environment = no_proxy_in_the_environment
    client = make_client()
    push(client)

    # the proxy named by the environment is really used: nothing listens there
    environment.setenv("HTTP_PROXY", f"http://127.0.0.1:{unused_port()}")
    with pytest.raises(errors.ConnectionFailed):
        push(client)
    assert len(fake.calls("stkpush")) == 1

    environment.setenv("NO_PROXY", "127.0.0.1")
    push(client)
    assert len(fake.calls("stkpush")) == 2


def test_the_ca_bundle_named_by_the_environment_is_the_one_used(no_proxy_in_the_environment):
    no_proxy_in_the_environment.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/company-ca.pem")
    with pytest.raises(OSError, match="/nonexistent/company-ca.pem"):
        new_session().get(f"https://127.0.0.1:{unused_port()}/oauth", timeout=2)


def test_credentials_in_a_netrc_file_never_replace_the_clients_own(
        make_client, fake, tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone-else password their-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    client = make_client()
    push(client)
    client.stk_query("ws_CO_1")
    (oauth,) = fake.calls("oauth")
    assert oauth.headers["Authorization"] == "Basic " + base64.b64encode(
        f"{CONSUMER_KEY}:{CONSUMER_SECRET}".encode()).decode()
    for sent in fake.calls("stkpush") + fake.calls("stkquery"):
        assert sent.headers["Authorization"].startswith("Bearer tok")


def test_cookies_daraja_sets_are_never_sent_back(make_client, fake):
    fake.cookie = "SERVERID=node-7; Path=/"
    client = make_client()
    push(client)
    push(client)
    client.stk_query("ws_CO_1")
    assert len(fake.seen) == 4
    assert all("Cookie" not in sent.headers for sent in fake.seen)
