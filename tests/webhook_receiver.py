"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that checks every delivery
with the Standard Webhooks reference library, as a client of the gateway would.

It can be told to fail its first few attempts, to see the gateway's retries through, to
answer slowly, or to redirect every delivery elsewhere.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import standardwebhooks


class Receiver:
    def __init__(self, *, fail_first: int = 0, failure_status: int = 500,
                 redirect_to: str | None = None):
        self.fail_first = fail_first
        self.failure_status = failure_status
        self.redirect_to = redirect_to     # answer every POST 307 to there
        self.secret: str | None = None     # set once the endpoint is created
        self.attempts = 0                  # every POST, failed on purpose or not
        self.webhook_ids: list[str] = []   # the webhook-id header of every POST
        self.hosts: list[str] = []         # the Host header of every POST
        self.delay_s = 0.0                 # how long to sit on a request before answering
        self.verified: list[dict] = []     # {"event": …, "headers": …} of accepted deliveries
        self.rejected: list[str] = []      # why a delivery failed verification
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/topup?src=gateway"

    def start(self) -> "Receiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def event_ids(self) -> list[str]:
        with self._lock:
            return [d["event"]["id"] for d in self.verified]

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.attempts += 1
                    receiver.webhook_ids.append(self.headers.get("webhook-id"))
                    receiver.hosts.append(self.headers.get("Host"))
                    failing = receiver.attempts <= receiver.fail_first
                if receiver.delay_s:   # a slow receiver: the delay is the test's subject
                    time.sleep(receiver.delay_s)
                if receiver.redirect_to:
                    return self._answer(307, Location=receiver.redirect_to)
                if failing:
                    return self._answer(receiver.failure_status)
                headers = {k: v for k, v in self.headers.items()}
                try:
                    event = standardwebhooks.Webhook(receiver.secret).verify(body, headers)
                except Exception as exc:  # noqa: BLE001 - every refusal is a finding
                    with receiver._lock:
                        receiver.rejected.append(f"{type(exc).__name__}: {exc}")
                    return self._answer(400)
                with receiver._lock:
                    receiver.verified.append({"event": event, "headers": headers,
                                              "path": self.path, "raw": body})
                return self._answer(204)

            def _answer(self, status, **headers):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        return Handler


def event_types(receiver: Receiver) -> list[str]:
    return [d["event"]["type"] for d in receiver.verified]


def as_json(raw: bytes) -> dict:
    return json.loads(raw)
