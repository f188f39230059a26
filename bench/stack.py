"""The system under measurement, started for real on 127.0.0.1: redis-server, PostgreSQL,
the Daraja simulator, gunicorn and ``dramatiq workers`` as separate processes.

The servers come from ``topupctl.devservers`` (free ports, root-safe, killed with us), as the
integration tests' do; the gateway's processes are started the way the README starts them.
Every process started here is stopped by :meth:`Stack.close`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg2
import redis
import requests

from topupctl.devservers import PostgresServer, RedisServer, find_free_port, wait_until

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
CALLBACK_TOKEN = "b3ac4c11" * 4
# The API's gunicorn settings (README), for the gateway and for the trivial baseline alike.
API_WORKERS, API_THREADS = 2, 4
# The workers' settings in every measurement: the same as in the runs before, so that the
# figures compare with theirs.
WORKER_PROCESSES, WORKER_THREADS = 2, 4


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen, log: Path):
        self.name, self.popen, self.log = name, popen, log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Stack:
    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(self.dir / "redis")
        self.postgres = PostgresServer(self.dir / "postgres")
        self.procs: dict[str, Proc] = {}
        self.sim_url = None

    # --- servers --------------------------------------------------------------------------
    def start(self) -> "Stack":
        self.redis.start()
        self.postgres.start()
        port = find_free_port()
        self.sim_url = f"http://127.0.0.1:{port}"
        self.spawn("simulator", [str(BIN / "topupctl"), "simulator", "--host", "127.0.0.1",
                                 "--port", str(port), "--callback-delay", "0"],
                   env=dict(os.environ))
        wait_until(lambda: self.answers(self.sim_url + "/__sim/stats"), timeout=20,
                   message="the simulator")
        return self

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        self.redis.close()
        self.postgres.close()

    # --- databases and queues -------------------------------------------------------------
    def new_database(self, name: str) -> str:
        """A fresh PostgreSQL database with the gateway's schema (``topupctl db upgrade``)."""
        url = self.postgres.create_database(name)
        subprocess.run([str(BIN / "topupctl"), "db", "upgrade"], check=True, cwd=ROOT,
                       env=self.env(url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=120)
        return url

    def pg(self, url: str):
        """A psycopg2 connection (autocommit) to a database of the stack."""
        name = url.rsplit("/", 1)[1]
        conn = psycopg2.connect(host=self.postgres.host, port=self.postgres.port,
                                user="topup", dbname=name, connect_timeout=10)
        conn.autocommit = True
        return conn

    def redis_url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/{db}"

    def flush_redis(self) -> None:
        redis.Redis.from_url(self.redis_url(), socket_timeout=10).flushall()

    def sim(self, method: str, path: str, body: dict | None = None) -> dict:
        answer = requests.request(method, self.sim_url + path, json=body, timeout=10)
        answer.raise_for_status()
        return answer.json()

    def reset_simulator(self, **config) -> None:
        self.sim("POST", "/__sim/reset")
        self.sim("POST", "/__sim/config", {"callback_delay_s": 0, **config})

    # --- the gateway's processes ----------------------------------------------------------
    def env(self, database_url: str, **extra) -> dict:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PG", "DARAJA_"))},
            "DATABASE_URL": database_url,
            "REDIS_URL": self.redis_url(),
            "DARAJA_BASE_URL": self.sim_url or "http://127.0.0.1:9",
            "DARAJA_CALLBACK_TOKEN": CALLBACK_TOKEN,
            # where Daraja calls back: the API's URL, given by the caller once the API runs;
            # until then the discard port, never a default port someone else may be using
            "PUBLIC_BASE_URL": "http://127.0.0.1:9",
            # as deployed (README): an idle worker picks up a new message within 0.2 s
            "dramatiq_worker_timeout": "200",
            "PYTHONUNBUFFERED": "1",
            **{k: str(v) for k, v in extra.items()},
        }

    def spawn(self, name: str, argv: list[str], *, env: dict) -> Proc:
        if name in self.procs:
            self.stop(name)
        log = self.dir / f"{name}.log"
        with open(log, "ab") as handle:
            popen = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=handle, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc

    def start_api(self, name: str, env: dict, *,
                  app: str = "app:create_app()") -> tuple[Proc, str]:
        port = find_free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**env, "PUBLIC_BASE_URL": url}
        proc = self.spawn(name, [str(BIN / "gunicorn"), app, "--bind", f"127.0.0.1:{port}",
                                 "--workers", str(API_WORKERS), "--threads", str(API_THREADS),
                                 "--backlog", "2048"], env=env)

        def up():
            if not proc.alive():
                raise RuntimeError(f"{name} exited:\n{proc.tail()}")
            return self.answers(url + "/healthz", ok=(200, 404))
        wait_until(up, timeout=30, message=f"{name} to answer")
        # every gunicorn worker booted (the master answers through them)
        wait_until(lambda: len(children(proc.pid)) >= API_WORKERS, timeout=30,
                   message=f"{name}'s workers")
        return proc, url

    def start_workers(self, name: str, env: dict, *, queues: list[str] | None = None) -> Proc:
        argv = [str(BIN / "dramatiq"), "workers", "--processes", str(WORKER_PROCESSES),
                "--threads", str(WORKER_THREADS)]
        if queues:
            argv += ["--queues", *queues]
        proc = self.spawn(name, argv, env=env)

        def booted():
            if not proc.alive():
                raise RuntimeError(f"{name} exited:\n{proc.tail()}")
            return len(children(proc.pid)) >= WORKER_PROCESSES
        wait_until(booted, timeout=30, message=f"{name}'s processes")
        return proc

    def start_scheduler(self, name: str, env: dict, *, interval_s: float) -> Proc:
        """``topupctl scheduler``: the sweeps, which also send each top-up's first STK query
        when it comes due."""
        proc = self.spawn(name, [str(BIN / "topupctl"), "scheduler", "--interval",
                                 str(interval_s)], env=env)

        def started():
            if not proc.alive():
                raise RuntimeError(f"{name} exited:\n{proc.tail()}")
            return "scheduler started" in proc.tail()
        wait_until(started, timeout=30, message=f"{name} to start")
        return proc

    def stop(self, name: str, timeout: float = 20) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or not proc.alive():
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.popen.wait(timeout=10)
        except ProcessLookupError:
            pass

    @staticmethod
    def answers(url: str, ok=(200,)) -> bool:
        try:
            return requests.get(url, timeout=1).status_code in ok
        except requests.RequestException:
            return False


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(x) for x in handle.read().split()]
    except OSError:
        return []
