"""The gateway's real processes for integration tests: gunicorn API, `dramatiq workers`,
against a real Redis and a real database, with the simulator running in the test process.

Everything talks over real sockets, as in production; the test reads the ledger directly
to check balances and statuses.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import urllib.request

import requests
from dramatiq.brokers.stub import StubBroker

import bootstrap
import settings
from ledger import accounts, db, migrate
from topupctl.devservers import find_free_port
from tests.waiting import wait_until
from workers import broker as worker_broker

BIN = os.path.dirname(sys.executable)
CALLBACK_TOKEN = "feedface" * 4
# nothing listens there: the test process itself never reaches for the servers' Redis
UNREACHABLE_REDIS = "redis://127.0.0.1:9/0"


def configure_test_process(database_url: str) -> None:
    """This process, configured by the bootstrap to read and write the ledger at
    ``database_url``. What it sends goes to a StubBroker: the real processes under test
    have the real one."""
    configured = settings.load({"DATABASE_URL": database_url, "REDIS_URL": UNREACHABLE_REDIS},
                               need_callback_token=False)
    bootstrap.configure("tests", configured,
                        broker=StubBroker(middleware=worker_broker.dramatiq_middleware()),
                        logging=False)


class System:
    def __init__(self, tmp_path, *, redis_url: str, database_url: str, simulator_url: str,
                 extra_env: dict | None = None):
        self.tmp = tmp_path
        self.api_port = find_free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DARAJA_BASE_URL": simulator_url,
            "PUBLIC_BASE_URL": self.api_url,
            "DARAJA_CALLBACK_TOKEN": CALLBACK_TOKEN,
            "dramatiq_worker_timeout": "200",   # as deployed (workers/broker.py)
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.processes: dict[str, subprocess.Popen] = {}
        configure_test_process(database_url)
        with db.connection():
            migrate.upgrade()

    # --- processes ---------------------------------------------------------------------------
    def _start(self, name, argv):
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=os.getcwd(), start_new_session=True)
        self.processes[name] = proc
        return proc

    def start_api(self, workers: int = 2, threads: int = 4):
        self._start("api", [os.path.join(BIN, "gunicorn"), "app:create_app()",
                            "--bind", f"127.0.0.1:{self.api_port}", "--workers", str(workers),
                            "--threads", str(threads)])
        wait_until(self._api_up, timeout=30, message="the API to answer /healthz")

    def _api_up(self):
        try:
            with urllib.request.urlopen(self.api_url + "/healthz", timeout=1):
                return True
        except Exception:
            return False

    def start_workers(self, processes: int = 1, threads: int = 4, name: str = "workers"):
        return self._start(name, [os.path.join(BIN, "dramatiq"), "workers",
                                  "--processes", str(processes), "--threads", str(threads)])

    def start_scheduler(self, interval: float = 1.0, name: str = "scheduler"):
        return self._start(name, [os.path.join(BIN, "topupctl"), "scheduler",
                                  "--interval", str(interval)])

    def stop_process(self, name: str, sig=signal.SIGTERM, timeout: float = 30):
        proc = self.processes.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self):
        for name in list(self.processes):
            self.stop_process(name)

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- the client's side ---------------------------------------------------------------------
    def create_account(self, name="test"):
        with db.connection():
            account, key = accounts.create_account(name)
        return account.id, key

    def topup(self, key: str, amount: int, phone: str, **extra) -> dict:
        response = requests.post(self.api_url + "/v1/topups", timeout=10,
                                 headers={"Authorization": f"Bearer {key}"},
                                 json={"provider": "mpesa", "amount": amount, "phone": phone,
                                       **extra})
        assert response.status_code == 202, response.text
        return response.json()

    def get(self, key: str, path: str) -> dict:
        response = requests.get(self.api_url + path, timeout=10,
                                headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        return response.json()

    def post_callback(self, body: dict) -> requests.Response:
        return requests.post(f"{self.api_url}/daraja/callback/{CALLBACK_TOKEN}",
                             data=json.dumps(body), timeout=10,
                             headers={"Content-Type": "application/json"})


# --- fixtures shared by the integration tests (imported by their modules) ---------------------
import pytest  # noqa: E402


@pytest.fixture
def simulator():
    from simulator.server import SimulatorConfig, SimulatorServer
    sim = SimulatorServer(host="127.0.0.1", port=0, config=SimulatorConfig(callback_delay_s=0.1))
    sim.start()
    yield sim
    sim.stop()


def sim_call(sim, method: str, path: str, body: dict | None = None) -> dict:
    response = requests.request(method, sim.url + path, json=body, timeout=10)
    response.raise_for_status()
    return response.json()


@pytest.fixture
def pg_system(tmp_path, request, redis_server, postgres_server, simulator):
    """The gateway on PostgreSQL and a real Redis, in a database of its own."""
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    readable = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40]
    database_url = postgres_server.create_database(f"t_{readable}_{digest}")
    redis_db = redis_server.url
    import redis as redis_lib
    redis_lib.Redis.from_url(redis_db).flushdb()
    system = System(tmp_path, redis_url=redis_db, database_url=database_url,
                    simulator_url=simulator.url)
    yield system
    system.stop()
