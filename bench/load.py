"""Load generators: wrk (Debian's package) driven by Lua scripts, or a small Python one.

wrk is a separate C process, cheap on the CPU the system under test also needs. Without it
(and without root to ``apt-get install -y wrk``) the Python generator below stands in; the
report says which one ran, because the Python one takes noticeably more of the 2 cores.

Every run is bounded twice: by a duration and, when given, by a request count.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

LUA = Path(__file__).resolve().parent / "lua"


def ensure_wrk() -> tuple[str | None, str]:
    """(path to wrk or None, how it was found)."""
    found = shutil.which("wrk")
    if found:
        return found, "wrk (Debian package, already installed)"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for command in (["apt-get", "install", "-y", "-q", "wrk"],
                        ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "wrk"]):
            subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=300)
            found = shutil.which("wrk")
            if found:
                return found, "wrk (Debian package, installed by the bench with apt-get)"
    return None, "Python load generator (wrk not installed and not installable here)"


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


class Load:
    """Runs one load against a URL and answers the same figures whichever generator ran:
    ``{"requests", "rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors", "duration_s"}``."""

    def __init__(self, workdir: Path):
        self.wrk, self.generator = ensure_wrk()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    # --- wrk -------------------------------------------------------------------------------
    def _script(self, name: str) -> Path:
        path = self.workdir / f"wrk-{name}.lua"
        body = (LUA / f"{name}.lua").read_text() if name != "plain" else ""
        path.write_text(body + "\n" + (LUA / "report.lua").read_text())
        return path

    def run(self, url: str, *, script: str, args: list[str] = (), connections: int,
            duration_s: float, limit: int = 0, delay_ms: float = 0, headers: dict = None,
            request_factory=None, method: str = "POST", stop_when=None) -> dict:
        """``limit``: total requests (0: only the duration bounds the run). ``delay_ms``: the
        pause each connection takes between its requests (pacing, open-ish loop).
        ``request_factory(connection, n) -> (body, headers)`` builds what the Lua script
        builds, for the Python generator. ``stop_when()``, polled meanwhile, ends the run early
        when it answers true (wrk's threads stop at their share of ``limit``, but wrk itself
        waits out its duration)."""
        threads = max(1, min(2, connections))
        if self.wrk is None:
            return self._python(url, connections=connections, duration_s=duration_s,
                                limit=limit, delay_ms=delay_ms, headers=headers or {},
                                request_factory=request_factory, method=method)
        argv = [self.wrk, "-t", str(threads), "-c", str(connections),
                "-d", f"{max(1, round(duration_s))}s", "--timeout", "10s",
                "-s", str(self._script(script))]
        for name, value in (headers or {}).items():
            argv += ["-H", f"{name}: {value}"]
        argv += [url, "--", *map(str, args)]
        if script == "callback":
            argv.append(str(-(-limit // threads) if limit else 0))
        elif script == "topups":
            argv += [str(-(-limit // threads) if limit else 0), str(int(delay_ms))]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if stop_when is not None:
            # bounded by wrk's own duration: it exits then, and the loop with it
            while process.poll() is None:
                if stop_when():
                    process.send_signal(signal.SIGINT)  # wrk prints its figures and exits
                    break
                time.sleep(0.2)   # a query each time: seldom, to weigh little on the load
        out, err = process.communicate(timeout=duration_s + 60)
        line = next((out_line for out_line in out.splitlines()
                     if out_line.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no figures: {out[-500:]} {err[-500:]}")
        raw = json.loads(line[len("WRKJSON "):])
        duration = raw["duration_us"] / 1e6
        lat = raw["latency_us"]
        return {
            "generator": "wrk", "connections": connections, "requests": raw["requests"],
            "duration_s": round(duration, 2),
            "rps": round(raw["requests"] / duration, 1) if duration else None,
            "p50_ms": lat["p50"] / 1000, "p90_ms": lat["p90"] / 1000,
            "p99_ms": lat["p99"] / 1000, "max_ms": lat["max"] / 1000,
            "errors": {k: v for k, v in raw["errors"].items() if v},
        }

    # --- Python fallback ----------------------------------------------------------------------
    def _python(self, url, *, connections, duration_s, limit, delay_ms, headers,
                request_factory, method) -> dict:
        parts = urlsplit(url)
        path = parts.path or "/"
        latencies: list[float] = []
        errors = {"status": 0, "connect": 0}
        lock = threading.Lock()
        counter = iter(range(1, 10**9))
        deadline = time.monotonic() + duration_s
        issued = [0]

        def client(tid: int):
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            while time.monotonic() < deadline:
                with lock:
                    if limit and issued[0] >= limit:
                        return
                    issued[0] += 1
                    n = next(counter)
                body, extra = request_factory(tid, n) if request_factory else (None, {})
                sent = time.monotonic()
                try:
                    conn.request(method, path, body=body,
                                 headers={**headers, **extra, "Content-Type": "application/json"})
                    answer = conn.getresponse()
                    answer.read()
                    status = answer.status
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                    with lock:
                        errors["connect"] += 1
                    continue
                elapsed = time.monotonic() - sent
                with lock:
                    latencies.append(elapsed)
                    if status >= 400:
                        errors["status"] += 1
                if delay_ms:
                    time.sleep(delay_ms / 1000)

        started = time.monotonic()
        pool = [threading.Thread(target=client, args=(i + 1,), daemon=True)
                for i in range(connections)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(duration_s + 15)
        duration = time.monotonic() - started
        ms = [x * 1000 for x in latencies]
        return {
            "generator": "python", "connections": connections, "requests": len(ms),
            "duration_s": round(duration, 2), "rps": round(len(ms) / duration, 1),
            "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99), "max_ms": max(ms) if ms else None,
            "errors": {k: v for k, v in errors.items() if v},
        }


# --- the bodies the Lua scripts build, for the Python generator -------------------------------

def callback_request(tag: str):
    def make(tid: int, n: int) -> tuple[bytes, dict]:
        unique = f"{tag}{tid:02d}{n:07d}"
        return json.dumps({"Body": {"stkCallback": {
            "MerchantRequestID": f"29115-34620561-{unique}",
            "CheckoutRequestID": f"ws_CO_2026112810{unique}", "ResultCode": 0,
            "ResultDesc": "The service request is processed successfully.",
            "CallbackMetadata": {"Item": [
                {"Name": "Amount", "Value": 1000}, {"Name": "MpesaReceiptNumber",
                                                    "Value": f"{tag}{tid % 10}{n:07d}"},
                {"Name": "Balance"}, {"Name": "TransactionDate", "Value": 20261128100512},
                {"Name": "PhoneNumber", "Value": 254700000000 + (tid * 1000000 + n) % 10**8}]}}}},
            separators=(",", ":")).encode(), {}
    return make


def topup_request(keys: list[str], run: int):
    def make(tid: int, n: int) -> tuple[bytes, dict]:
        phone = f"2547{run:02d}{tid % 10}{n % 100000:05d}"
        body = json.dumps({"provider": "mpesa", "amount": 10 + n % 990, "phone": phone,
                           "reference": f"B{n}"}).encode()
        return body, {"Authorization": f"Bearer {keys[n % len(keys)]}",
                      "Idempotency-Key": f"bench-{phone}"}
    return make
