"""The workers' /metrics asks for no token: it listens on this machine only unless told."""
import dataclasses
import socket

import pytest

import settings as settings_module
from telemetry import worker_metrics


def test_the_workers_metrics_listen_on_loopback_unless_configured(monkeypatch):
    loaded = settings_module.load({"DARAJA_CALLBACK_TOKEN": "ab" * 16})
    assert loaded.worker_metrics_host == "127.0.0.1"
    bound, real_make_server = [], worker_metrics.make_server

    class Bound(Exception):
        pass

    def make_server(host, port):
        bound.append(host)
        raise Bound()
    monkeypatch.setattr(worker_metrics, "make_server", make_server)
    monkeypatch.setattr(settings_module, "load",
                        lambda *a, **k: dataclasses.replace(loaded, worker_metrics_port=9))
    with pytest.raises(Bound):
        worker_metrics.serve()
    assert bound == ["127.0.0.1"]

    server = real_make_server("127.0.0.1", 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
        with socket.create_connection(server.server_address, timeout=2):
            pass
    finally:
        server.server_close()
