"""The simulator over HTTP: Daraja's endpoints and the ``/__sim/`` control endpoints.

::

    sim = SimulatorServer(host="127.0.0.1", port=0, config=SimulatorConfig()).start()
    sim.url        # http://127.0.0.1:PORT
    sim.daraja     # the engine, for in-process tests: stats(), reset(), transactions(), ...
    sim.stop()

    serve(host="127.0.0.1", port=8900, config=SimulatorConfig())   # blocks until SIGINT/SIGTERM

Standard library only (``http.server.ThreadingHTTPServer``), HTTP/1.1 keep-alive with a
Content-Length on every answer. The handler is thin: it reads the request, calls one
:class:`~simulator.engine.Daraja` method, holds the answer if the reply says so, and writes it.
"""
from __future__ import annotations

import json
import logging
import signal
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote

from . import phone, rules, statement
from .config import SimulatorConfig
from .engine import Daraja, Reply, json_reply

__all__ = ["SimulatorServer", "SimulatorConfig", "serve"]

log = logging.getLogger("simulator")

MAX_BODY = 1 << 20  # 1 MiB: no Daraja request comes near


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address, handler, daraja: Daraja, stopping: threading.Event):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.daraja = daraja
        self.stopping = stopping
        super().__init__(address, handler)

    def server_bind(self):
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup we do not need
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        log.debug("simulator: connection from %s ended with an error", client_address[0],
                  exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "daraja-simulator"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 300  # idle keep-alive connections are closed after this

    server: _HTTPServer

    # --- plumbing -------------------------------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        # called for every answer: its line is formatted only when someone reads DEBUG
        if log.isEnabledFor(logging.DEBUG):
            log.debug("simulator: %s %s", self.address_string(), format % args)

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True  # chunked bodies are not supported: no reuse
            return b""
        try:
            size = int(length)
        except ValueError:
            return None
        if not 0 <= size <= MAX_BODY:
            return None
        return self.rfile.read(size) if size else b""

    def _send(self, reply: Reply) -> None:
        if reply.wait_for is not None:
            reply.wait_for.wait(reply.wait_timeout_s)
        if reply.hold_s > 0:
            self.server.stopping.wait(reply.hold_s)
        self.send_response(reply.status)
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        for name, value in (reply.headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        # the head and the body in one write (end_headers, then the body, were two sends and,
        # with Nagle off, two packets for the client to read)
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(reply.body)
        self.flush_headers()

    def _answer(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        body = b""
        if method == "POST" or self.headers.get("Content-Length"):
            body = self._read_body()
            if body is None:
                self.close_connection = True
                self._send(json_reply(400, {"error": "bad or oversized Content-Length"}))
                return
        try:
            reply = self._route(method, path, query, body)
        except Exception:  # noqa: BLE001 - an answer always goes out
            log.exception("simulator: %s %s failed", method, path)
            reply = json_reply(500, {"requestId": "0", "errorCode": "500.003.1001",
                                     "errorMessage": "Internal Server Error"})
        self._send(reply)

    def do_GET(self):
        self._answer("GET")

    def do_POST(self):
        self._answer("POST")

    def do_PUT(self):
        self._answer("PUT")

    def do_DELETE(self):
        self._answer("DELETE")

    def do_PATCH(self):
        self._answer("PATCH")

    # --- routes ---------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: str, body: bytes) -> Reply:
        daraja = self.server.daraja
        headers = self.headers
        if path == "/mpesa/stkpush/v1/processrequest":
            if method != "POST":
                return daraja.error_reply(rules.METHOD_NOT_ALLOWED)
            return daraja.stk_push(headers.get("Authorization"), headers.get("Content-Type"),
                                   body)
        if path == "/mpesa/stkpushquery/v1/query":
            if method != "POST":
                return daraja.error_reply(rules.METHOD_NOT_ALLOWED)
            return daraja.stk_query(headers.get("Authorization"), headers.get("Content-Type"),
                                    body)
        if path == "/oauth/v1/generate":
            if method != "GET":
                return daraja.error_reply(rules.METHOD_NOT_ALLOWED)
            return daraja.oauth(query, headers.get("Authorization"))
        if path.startswith("/__sim/"):
            return self._control(daraja, method, path[len("/__sim/"):], query, body)
        if path == "/phone" or path.startswith("/phone/"):
            return phone.route(daraja, method, path, body, headers)
        return daraja.error_reply(rules.RESOURCE_NOT_FOUND)

    def _control(self, daraja: Daraja, method: str, name: str, query: str,
                 body: bytes) -> Reply:
        """``/__sim/…``: a POST changes something, then answers as the GET of the same name
        (when there is one) does."""
        read_only = name in _READ_ONLY or name.startswith("transactions/")
        if method == "POST" and not read_only:
            try:
                answer = _control_change(daraja, name, body)
            except ValueError as exc:
                return json_reply(400, {"error": str(exc)})
            if answer is not None:
                return answer
        if method == "GET" or (method == "POST" and not read_only):
            answer = _control_read(daraja, name, query)
            if answer is not None:
                return answer
        return json_reply(404, {"error": f"no control endpoint {method} /__sim/{name}"})


def _control_change(daraja: Daraja, name: str, body: bytes) -> Reply | None:
    """The POSTs of ``/__sim/``: a Reply, or None to answer with the read of ``name``."""
    if name == "reset":
        daraja.reset()
        return json_reply(200, {"reset": True})
    if name == "expire-tokens":
        return json_reply(200, {"expired": daraja.expire_tokens()})
    if name == "config":
        daraja.update_config(_json_object(body))
    elif name == "scripts":
        return json_reply(200, {"scripted": daraja.add_scripts(
            _json_object(body).get("scripts"))})
    elif name == "faults":
        request = _json_object(body)
        daraja.queue_fault(request.get("fault"), request.get("count", 1))
    return None


# what only a GET reads (a POST of these names is not an endpoint)
_READ_ONLY = ("stats", "transactions", "statement.csv", "refusals")


def _control_read(daraja: Daraja, name: str, query: str) -> Reply | None:
    """The reads of ``/__sim/``, or None when there is no such endpoint."""
    if name == "stats":
        return json_reply(200, daraja.stats())
    if name == "transactions":
        params = parse_qs(query)
        phone = params.get("phone", [None])[0]
        limit = params.get("limit", [None])[0]
        if limit is not None and not limit.isdigit():
            return json_reply(400, {"error": "limit must be a whole number"})
        return json_reply(200, {"data": daraja.transactions(
            phone=phone, limit=int(limit) if limit is not None else None)})
    if name.startswith("transactions/"):
        found = daraja.transaction(unquote(name[len("transactions/"):]))
        if found is None:
            return json_reply(404, {"error": "no such CheckoutRequestID"})
        return json_reply(200, found)
    if name == "statement.csv":
        return Reply(200, statement.to_csv(daraja.paid_transactions()),
                     "text/csv; charset=utf-8")
    if name == "config":
        return json_reply(200, daraja.config.public())
    if name == "scripts":
        return json_reply(200, {"data": daraja.scripts()})
    if name == "refusals":
        reference = parse_qs(query).get("account_reference", [None])[0]
        return json_reply(200, {"data": daraja.refusals(reference)})
    if name == "faults":
        return json_reply(200, {"data": daraja.faults()})
    return None


def _json_object(body: bytes) -> dict:
    try:
        value = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the body must be a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError("the body must be a JSON object")
    return value


class SimulatorServer:
    """The simulator on ``host:port`` (0: any free port), served from a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 config: SimulatorConfig | None = None):
        self.host = host
        self._requested_port = port
        self.config = config or SimulatorConfig()
        self.daraja = Daraja(self.config)
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "SimulatorServer":
        """Bind, start serving and the callback threads; returns once it is listening."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _HTTPServer((self.host, self._requested_port), _Handler, self.daraja,
                                  self._stopping)
        self.daraja.start()
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"simulator-{self.port}", daemon=True)
        self._thread.start()
        log.debug("Daraja simulator listening on %s", self.url)
        return self

    @property
    def port(self) -> int:
        if self._httpd is not None:
            return self._httpd.server_address[1]
        return self._requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop listening, release held answers, drop callbacks not yet sent."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self.daraja.stop()
        self._httpd = None

    def __enter__(self) -> "SimulatorServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def serve(host: str = "127.0.0.1", port: int = 8900,
          config: SimulatorConfig | None = None) -> None:
    """Run the simulator until SIGINT or SIGTERM; prints one line saying where it listens."""
    config = config or SimulatorConfig()
    sim = SimulatorServer(host=host, port=port, config=config).start()
    print(f"Daraja simulator listening on {sim.url} (shortcode {config.shortcode}, "
          f"callback delay {config.callback_delay_s:g} s); the customer's phone: "
          f"{sim.url}/phone", flush=True)
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
