"""The workers' /metrics asks for no token: it listens on this machine only unless told."""
import dataclasses
import socket

import pytest

import bootstrap
from telemetry import worker_metrics
from workers.observability import serve_metrics


def test_the_workers_metrics_listen_on_loopback_unless_configured(
        monkeypatch, settings, stub_broker):
    assert settings.worker_metrics_host == "127.0.0.1"
    bound, real_make_server = [], worker_metrics.make_server

    class Bound(Exception):
        pass

    def make_server(host, port):
        bound.append(host)
        raise Bound()
    monkeypatch.setattr(worker_metrics, "make_server", make_server)
    bootstrap.configure("tests", dataclasses.replace(settings, worker_metrics_port=9),
                        broker=stub_broker, database=False, logging=False)
    with pytest.raises(Bound):
        serve_metrics()   # the body of the fork Dramatiq starts
    assert bound == ["127.0.0.1"]

    server = real_make_server("127.0.0.1", 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
        with socket.create_connection(server.server_address, timeout=2):
            pass
    finally:
        server.server_close()
