"""The workers' ``/metrics``: one small HTTP server per ``dramatiq workers`` command.

Dramatiq starts it as a *fork* (a process of its own beside the worker processes, see
:func:`workers.observability.serve_metrics`); it answers with what every worker process of
that command counted, summed from their shared directory (:mod:`telemetry.metrics`). It
listens on ``WORKER_METRICS_PORT`` (default 9191, ``0`` turns it off) on
``WORKER_METRICS_HOST`` (default 127.0.0.1: it asks for no token); when the port is taken (a
second ``dramatiq workers`` on the same host) it says so and stops, and the workers carry on
without it.
"""
from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from telemetry import metrics

log = logging.getLogger("telemetry.worker_metrics")


class _Handler(BaseHTTPRequestHandler):
    server_version = "topup-worker-metrics"

    def do_GET(self):  # noqa: N802 (the http.server API)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type, status = metrics.render(), metrics.content_type(), 200
        elif path == "/healthz":
            body, content_type, status = b'{"status": "ok"}', "application/json", 200
        else:
            body, content_type, status = b"not found\n", "text/plain", 404
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 (the http.server API)
        log.debug("metrics request: " + format, *args)


def make_server(host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    return server


def serve(host: str, port: int) -> int:
    """Serve on ``host``:``port`` (port 0: not at all) until the process is told to stop."""
    if not port:
        return 0
    try:
        server = make_server(host, port)
    except OSError as exc:
        log.warning("worker metrics off: port %s is taken (%s)", port, exc.strerror)
        # Stay, idle, until Dramatiq stops its forks: a fork that returned at once was left
        # behind as a defunct process for as long as the workers ran.
        threading.Event().wait()
        return 0
    log.info("worker metrics on :%s/metrics", port, extra={"directory": metrics.directory()})
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
