"""`make run`'s webhook receiver: what a client's endpoint does, printed as it happens.

It listens on 127.0.0.1, checks every delivery's signature with the Standard Webhooks
reference library (as a client of the gateway should), answers 204 to a good one and 400 to
a bad one, and prints one line for each, so that a developer sees the first ``wallet.top_up``
arrive. Development only: it is not part of the gateway.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import standardwebhooks

PATH = "/hooks/topup"


def describe(event: dict) -> str:
    """One line for an event, with no phone number in it."""
    data = event.get("data") or {}
    topup = data.get("topup") or {}
    line = f"{event.get('type')} {topup.get('id', '')} status={topup.get('status')}"
    if topup.get("amount") is not None:
        line += f" amount=KES {topup['amount']}"
    if data.get("balance") is not None:
        line += f" balance=KES {data['balance']}"
    return line


class DevReceiver:
    def __init__(self, port: int, secret: str, say):
        self.verifier = standardwebhooks.Webhook(secret)
        self.say = say
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{PATH}"

    def start(self) -> "DevReceiver":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the standard library's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 20))
                try:
                    event = receiver.verifier.verify(body, dict(self.headers))
                except Exception as exc:  # noqa: BLE001 - any failure is a refused delivery
                    receiver.say(f"webhook REFUSED (signature): {type(exc).__name__}")
                    self.send_response(400)
                    self.end_headers()
                    return
                if isinstance(event, (bytes, str)):
                    event = json.loads(event)
                receiver.say(f"webhook verified: {describe(event)} "
                             f"(webhook-id {self.headers.get('webhook-id')})")
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):   # the line above says it all
                pass

        return Handler
