"""``make run``: the whole system on one machine, on embedded defaults, with the simulator.

Starts Redis (the system's ``redis-server`` if there is one, else an embedded in-process
server), migrates an SQLite ledger, starts the simulator, the API under gunicorn, a worker
and the scheduler, and a webhook receiver that prints what it gets; keeps one demo account,
its API key, its webhook endpoint and an ops token under ``var/`` (the same on every start;
``make reset`` starts afresh); registers the paybill's C2B URLs with the simulator; writes
``var/run.env`` for ``make topupctl``; and prints a curl line that tops up, the simulator's
phone page (where a person answers the prompts of phones no magic number claims), the command
that pays the demo wallet's account number as a customer would, and the console's address.
Ctrl-C (or SIGTERM) stops
everything it started, Redis last.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

VAR = os.path.abspath("var")
DEMO = os.path.join(VAR, "demo.json")          # the demo account, its key and endpoint
RUN_ENV = os.path.join(VAR, "run.env")         # what `make topupctl` needs, while up


def _die_with_parent() -> None:
    """In a child: ask Linux to SIGTERM us if `make run` itself dies (even by SIGKILL)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def say(text: str) -> None:
    print(f"[make run] {text}", flush=True)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, what: str, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"[make run] {what} did not come up at {url}; see var/log/")


class Processes:
    def __init__(self):
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.embedded_redis = None
        os.makedirs(os.path.join(VAR, "log"), exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        log = open(os.path.join(VAR, "log", f"{name}.log"), "ab")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
        self.children.append((name, proc))
        return proc

    def stop(self) -> None:
        # Redis last: the workers hand their prefetched messages back to it as they stop
        gateway = [(n, p) for n, p in self.children if n != "redis"]
        for group in (gateway, [(n, p) for n, p in self.children if n == "redis"]):
            for name, proc in reversed(group):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for name, proc in reversed(group):
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        if self.embedded_redis is not None:
            self.embedded_redis.shutdown()
        say("stopped everything it started")


def start_redis(procs: Processes, env: dict) -> str:
    port = 6379 if port_free(6379) else free_port()
    server = None if os.environ.get("TOPUP_EMBEDDED_REDIS") == "1" else shutil.which("redis-server")
    if server:
        data = os.path.join(VAR, "redis")
        os.makedirs(data, exist_ok=True)
        procs.start("redis", [server, "--port", str(port), "--bind", "127.0.0.1",
                              "--dir", data, "--appendonly", "yes",
                              "--maxmemory-policy", "noeviction", "--save", ""], env)
        say(f"Redis: the system's redis-server on port {port} (data in var/redis)")
    else:
        from fakeredis import TcpFakeServer
        srv = TcpFakeServer(("127.0.0.1", port), server_type="redis")
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        procs.embedded_redis = srv
        say("Redis: no system redis-server (or TOPUP_EMBEDDED_REDIS=1), so an embedded "
            f"in-process server (fakeredis) on port {port}; its queues live only as long as "
            "`make run`")
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    import redis
    while True:
        try:
            redis.Redis.from_url(url, socket_timeout=1).ping()
            return url
        except Exception:
            if time.monotonic() > deadline:
                raise SystemExit("[make run] Redis did not start; see var/log/redis.log")
            time.sleep(0.1)


def demo_account(receiver_url: str) -> dict:
    """The demo account, its API key, its webhook endpoint and the ops token: made once,
    kept in var/demo.json, found again on the next start (as long as the ledger has them)."""
    from ledger import accounts, db, webhooks
    from ledger.models import Account
    try:
        with open(DEMO) as kept:
            demo = json.load(kept)
        with db.connection():
            if (Account.get_or_none(Account.id == demo["account"]) is not None
                    and webhooks.get_endpoint(demo["account"], demo["endpoint"]) is not None):
                return demo
    except (OSError, ValueError, KeyError):
        pass
    with db.connection():
        account, key = accounts.create_account("demo")
        with db.write_transaction():
            endpoint = webhooks.create_endpoint(account.id, receiver_url,
                                                ["wallet.top_up", "topup.failed"])
    demo = {"account": account.id, "api_key": key, "endpoint": endpoint.id,
            "webhook_secret": endpoint.secret, "ops_token": secrets.token_hex(24)}
    with open(os.open(DEMO, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as kept:
        json.dump(demo, kept, indent=1)
    return demo


def register_paybill(configured, account_id: str) -> str:
    """Register the paybill's C2B URLs with the simulator (as ``topupctl daraja
    register-urls`` does with Daraja); the demo account's number."""
    import bootstrap
    from daraja import DarajaClient, MemoryTokenCache
    from ledger import db
    from ledger.models import Account
    client = DarajaClient(bootstrap.daraja_config(configured), token_cache=MemoryTokenCache())
    client.register_c2b_urls(shortcode=configured.daraja_c2b_shortcode,
                             confirmation_url=configured.c2b_confirmation_url,
                             validation_url=configured.c2b_validation_url)
    with db.connection():
        return Account.get(Account.id == account_id).account_number


def write_run_env(env: dict) -> None:
    names = ("DATABASE_URL", "REDIS_URL", "DARAJA_BASE_URL", "PUBLIC_BASE_URL",
             "DARAJA_CALLBACK_TOKEN", "OPS_TOKEN", "WEBHOOK_ALLOW_PRIVATE")
    with open(os.open(RUN_ENV, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.writelines(f"{name}={env[name]}\n" for name in names if env.get(name))


def main() -> int:
    # Ctrl-C, a closed terminal or a plain `kill` all stop everything `make run` started; so
    # does SIGINT sent to a `make run` started in the background, where it came ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    api_port = int(os.environ.get("TOPUP_API_PORT", "8000"))
    sim_port = int(os.environ.get("TOPUP_SIMULATOR_PORT", "8900"))
    hook_port = int(os.environ.get("TOPUP_WEBHOOK_PORT", "8901"))
    for port, what in ((api_port, "API"), (sim_port, "simulator"), (hook_port, "webhooks")):
        if not port_free(port):
            raise SystemExit(f"[make run] port {port} ({what}) is in use; stop what holds it "
                             f"or set TOPUP_API_PORT / TOPUP_SIMULATOR_PORT")
    procs = Processes()
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", f"sqlite:///{os.path.join(VAR, 'topup.db')}")
    env.setdefault("DARAJA_CALLBACK_TOKEN", secrets.token_hex(24))
    env.setdefault("DARAJA_BASE_URL", f"http://127.0.0.1:{sim_port}")
    env.setdefault("PUBLIC_BASE_URL", f"http://127.0.0.1:{api_port}")
    env.setdefault("STK_QUERY_AFTER_S", "20")
    # an idle worker picks up a new message within 0.2 s (the trade-off: workers/broker.py)
    env.setdefault("dramatiq_worker_timeout", "200")
    # development only: the demo's webhook endpoint is on this machine (127.0.0.1)
    env.setdefault("WEBHOOK_ALLOW_PRIVATE", "1")
    bin_dir = os.path.dirname(sys.executable)
    receiver = None
    try:
        env["REDIS_URL"] = env.get("REDIS_URL") or start_redis(procs, env)
        os.environ.update(env)

        import bootstrap
        import settings
        from ledger import db, migrate
        try:
            configured = settings.load(env)
        except settings.ConfigError as exc:
            raise SystemExit(f"[make run] configuration error: {exc}") from None
        # this process migrates the ledger and keeps the demo account: its own output stays
        # plain, and the broker is the processes' below
        bootstrap.configure("topupctl", configured, workers=False, logging=False)
        with db.connection():
            migrate.upgrade()
        say(f"ledger: {env['DATABASE_URL']} (migrated)")
        from topupctl.dev_webhooks import PATH, DevReceiver
        demo = demo_account(f"http://127.0.0.1:{hook_port}{PATH}")
        env.setdefault("OPS_TOKEN", demo["ops_token"])
        os.environ.update(env)
        write_run_env(env)
        receiver = DevReceiver(hook_port, demo["webhook_secret"], say).start()

        # phones no magic number claims wait for a person on the simulator's phone page
        procs.start("simulator", [os.path.join(bin_dir, "topupctl"), "simulator",
                                  "--port", str(sim_port), "--phones", "wait"], env)
        procs.start("api", [os.path.join(bin_dir, "gunicorn"), "app:create_app()",
                            "--bind", f"127.0.0.1:{api_port}", "--workers", "2",
                            "--threads", "4", "--graceful-timeout", "20"], env)
        procs.start("worker", [os.path.join(bin_dir, "dramatiq"), "workers",
                               "--processes", "1", "--threads", "8"], env)
        procs.start("scheduler", [os.path.join(bin_dir, "topupctl"), "scheduler"], env)
        wait_for(f"http://127.0.0.1:{sim_port}/__sim/stats", "the simulator")
        wait_for(f"http://127.0.0.1:{api_port}/healthz", "the API")
        number = register_paybill(configured, demo["account"])

        key = demo["api_key"]
        body = json.dumps({"provider": "mpesa", "amount": 1000, "phone": "0708 374 149",
                           "reference": "DEMO1"})
        api = f"http://127.0.0.1:{api_port}"
        sim_url = f"http://127.0.0.1:{sim_port}"
        say(f"simulator (Daraja) on http://127.0.0.1:{sim_port}, API on {api}; logs in var/log/")
        post_topup = (f"curl -s {api}/v1/topups -H 'Authorization: Bearer {key}' "
                      f"-H 'Content-Type: application/json' -d '{body}'")
        waits = body.replace("0708 374 149", "0712 345 678").replace("DEMO1", "DEMO2")
        post_waiting = post_topup.replace(body, waits)
        print(f"""
Demo account {demo['account']} (kept in var/demo.json; `make reset` starts afresh)
API key: {key}
Ops token: {env['OPS_TOKEN']}
Webhooks: {receiver.url} receives wallet.top_up and topup.failed, checks each signature
  and prints it here (WEBHOOK_ALLOW_PRIVATE=1: development only)

Top up KES 1,000 from the simulator's test phone (it pays at once):
  {post_topup}

Or from a phone that waits for you to pay, cancel or ignore the prompt on the customer's
phone page, {sim_url}/phone :
  {post_waiting}

Or pay the demo wallet as a customer would, from the phone's menu: Pay Bill, paybill
{configured.daraja_c2b_shortcode}, account number {number}, KES 250:
  make topupctl ARGS="simulator pay {number} 250"

The operator's console: {api}/console (sign in with the ops token above)

Then look at it and at the wallet:
  curl -s {api}/v1/topups/<id> -H 'Authorization: Bearer {key}'
  curl -s {api}/v1/wallet -H 'Authorization: Bearer {key}'
  curl -s {api}/ops/queues -H 'Authorization: Bearer {env['OPS_TOKEN']}'
  make topupctl ARGS="topups show <id>"

Ctrl-C stops everything.
""", flush=True)
        while True:
            for name, proc in procs.children:
                if proc.poll() is not None:
                    raise SystemExit(f"[make run] {name} exited ({proc.returncode}); "
                                     f"see var/log/{name}.log")
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    finally:
        if os.path.exists(RUN_ENV):
            os.remove(RUN_ENV)
        procs.stop()
        if receiver is not None:
            receiver.stop()


if __name__ == "__main__":
    sys.exit(main())
