"""How the simulator POSTs its callbacks (simulator/callbacks.py ``post_json``): on a connection
each delivery thread keeps, never twice, every failure named as before."""
from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from simulator.callbacks import post_json
from tests.waiting import wait_until

BODY = b'{"Body": {"stkCallback": {"ResultCode": 0}}}'


class Receiver:
    """A callback receiver that can answer slowly, close connections without saying so, or
    answer HTTP/1.0; it counts the POSTs and the connections they came on."""

    def __init__(self, *, close_silently=False, http10=False, delay_s=0.0, status=200):
        self.posts: list[bytes] = []
        self.connections = 0
        self.finished = 0    # POSTs answered (with close_silently, and closed) or given up
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0" if http10 else "HTTP/1.1"

            def setup(self):
                super().setup()
                receiver.connections += 1

            def do_POST(self):
                try:
                    self.answer()
                finally:   # answered, or given up on a client that had gone
                    receiver.finished += 1

            def answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.posts.append(body)
                time.sleep(delay_s)   # a slow receiver: the delay is the test's subject
                answer = b'{"ResultCode": 0, "ResultDesc": "Accepted"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                if close_silently:   # as a server whose keep-alive timeout ran out
                    self.close_connection = True
                    self.wfile.flush()
                    self.request.shutdown(socket.SHUT_WR)   # the close, on its way now

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/daraja/callback/ab12"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made = []

    def make(**kwargs):
        made.append(Receiver(**kwargs))
        return made[-1]
    yield make
    for receiver in made:
        receiver.close()


def test_callbacks_from_one_thread_share_one_connection(receivers):
    receiver = receivers()
    assert [post_json(receiver.url, BODY, 2.0) for _ in range(3)] == [(True, "200")] * 3
    assert receiver.posts == [BODY] * 3
    assert receiver.connections == 1


def test_a_connection_the_receiver_closed_is_replaced_and_the_callback_sent_once(receivers):
    receiver = receivers(close_silently=True)
    for n in range(1, 4):
        assert post_json(receiver.url, BODY, 2.0) == (True, "200")
        wait_until(lambda: receiver.finished == n,
                   message="the receiver's close, before the next callback")
    assert receiver.posts == [BODY] * 3
    assert receiver.connections == 3


def test_an_http10_receiver_gets_a_connection_per_callback(receivers):
    receiver = receivers(http10=True)
    assert [post_json(receiver.url, BODY, 2.0) for _ in range(2)] == [(True, "200")] * 2
    assert receiver.posts == [BODY] * 2


def test_a_receiver_answering_an_error_is_a_failure_named_by_its_status(receivers):
    receiver = receivers(status=503)
    assert post_json(receiver.url, BODY, 2.0) == (False, "503")
    assert receiver.posts == [BODY]   # not retried


def test_a_receiver_slower_than_the_timeout_is_a_read_timeout_sent_once(receivers):
    receiver = receivers(delay_s=0.5)
    assert post_json(receiver.url, BODY, 0.1) == (False, "ReadTimeout")
    wait_until(lambda: receiver.finished == 1, message="the late answer")
    assert receiver.posts == [BODY]
    # the next callback goes on a new connection, not the one its late answer came on
    assert post_json(receiver.url, BODY, 2.0) == (True, "200")
    assert (receiver.posts, receiver.connections) == ([BODY, BODY], 2)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/daraja/callback/ab12",
                                 "https://127.0.0.1:9/daraja/callback/ab12"])
def test_an_unreachable_receiver_is_a_connection_error_over_http_and_https(url):
    assert post_json(url, BODY, 2.0) == (False, "ConnectionError")
