"""Where the time goes: py-spy samples of our processes, PostgreSQL's view of the worker
connections, and the statements one unit of work sends to the database.

py-spy samples threads that are running or runnable (idle threads, blocked in a socket or a
lock, are left out), so its shares are of the CPU our Python code asked for, waiting for a
core included: on 2 busy cores that is what decides throughput. A Dramatiq consumer waiting for
work is left out as well (:func:`_idle_wait`): py-spy counts a thread in ``time.sleep`` as
running.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent

# A frame's file decides its category; the first match wins.
CATEGORIES = [
    ("our code (app/)", f"{ROOT}/app/"),
    ("our code (ledger/)", f"{ROOT}/ledger/"),
    ("our code (workers/)", f"{ROOT}/workers/"),
    ("our code (daraja/)", f"{ROOT}/daraja/"),
    ("our code (other)", f"{ROOT}/"),
    ("peewee (SQL building, pool)", "/peewee.py"),
    ("peewee (SQL building, pool)", "/playhouse/"),
    ("Dramatiq", "/dramatiq/"),
    ("redis-py", "/redis/"),
    ("rate limiting (flask-limiter, limits)", "/flask_limiter/"),
    ("rate limiting (flask-limiter, limits)", "/limits/"),
    ("metrics (prometheus_client)", "/prometheus_client/"),
    ("Flask, Werkzeug", "/flask/"),
    ("Flask, Werkzeug", "/werkzeug/"),
    ("gunicorn", "/gunicorn/"),
    ("logging", "/logging/"),
    ("logging", "/pythonjsonlogger/"),
    ("json", "/json/"),
    ("HTTP client (requests, urllib3)", "/requests/"),
    ("HTTP client (requests, urllib3)", "/urllib3/"),
    ("HTTP client (requests, urllib3)", "/http/client.py"),
    ("threads, sockets, selectors (stdlib)", "/threading.py"),
    ("threads, sockets, selectors (stdlib)", "/selectors.py"),
    ("threads, sockets, selectors (stdlib)", "/socket.py"),
    ("threads, sockets, selectors (stdlib)", "/queue.py"),
]
# Leaf frames that stand for a call into libpq: the round trip (and the server's work).
PG_CALLS = ("Database._execute_cursor", "Database.commit", "PostgresqlDatabase.begin",
            "is_connection_closed", "Database.rollback", "Database._connect",
            "Database.begin")


def _idle_wait(frames: list[str]) -> bool:
    """A consumer thread waiting for work: asleep between two polls in the ``__next__`` of
    Dramatiq's Redis consumer (its ``time.sleep`` is the innermost Python frame)."""
    def function(frame: str) -> str:   # "Class.method (/path)" or "method (/path)"
        return frame.split(" (")[0].rsplit(".", 1)[-1]

    leaf = frames[-1]
    return function(leaf) == "__next__" and "/dramatiq/brokers/redis.py" in leaf


def _category(frame: str) -> str:
    if any(name in frame for name in PG_CALLS):
        return "PostgreSQL calls (libpq: round trip, server work)"
    library = "/site-packages/" in frame
    for name, needle in CATEGORIES:
        if needle in frame and not (library and name.startswith("our code")):
            return name
    if "/python3." in frame or "<frozen" in frame:
        return "other stdlib"
    return "other"


class Spy:
    """``py-spy record`` of a process and its children for ``seconds``, in raw (collapsed)
    form; :meth:`summary` reads it."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 100):
        self.out = Path(out)
        self.process = subprocess.Popen(
            [str(BIN / "py-spy"), "record", "--pid", str(pid), "--subprocesses",
             "-d", str(max(1, int(seconds))), "-r", str(rate), "-f", "raw",
             "--full-filenames", "--nolineno", "--nonblocking", "-o", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait(self, timeout: float = 60) -> dict | None:
        try:
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return None
        if not self.out.exists():
            return {"error": (err or "py-spy wrote nothing")[-300:]}
        return summarise(self.out)


def summarise(path: Path, top: int = 12) -> dict:
    leaf, categories, inclusive = Counter(), Counter(), Counter()
    total = idle = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if _idle_wait(frames):
            idle += n
            continue
        total += n
        leaf[_short(frames[-1])] += n
        categories[_category(frames[-1])] += n
        for frame in set(frames):
            if str(ROOT) + "/" in frame and "/site-packages/" not in frame:
                inclusive[_short(frame)] += n
    if not total:
        return {"samples": 0, "idle_wait_samples": idle}
    share = lambda c: [[name, round(n / total, 3)] for name, n in c.most_common(top)]  # noqa: E731
    return {"samples": total, "idle_wait_samples": idle,
            "categories": share(categories), "self": share(leaf),
            "ours_inclusive": share(inclusive)}


def _short(frame: str) -> str:
    """``func (/long/path/pkg/mod.py)`` → ``func (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("/site-packages/", str(ROOT) + "/", "/lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})"


class PgActivity:
    """Samples what the client connections of one database are doing, every ``interval`` s:
    running a statement, waiting for a lock, idle inside a transaction (the client's turn,
    locks held), or idle between transactions."""

    QUERY = """
        SELECT CASE
                 WHEN state = 'active' AND wait_event_type = 'Lock' THEN 'waiting for a row lock'
                 WHEN state = 'active' AND wait_event_type IS NOT NULL
                      THEN 'active, waiting on ' || wait_event_type
                 WHEN state = 'active' THEN 'running a statement'
                 WHEN state LIKE 'idle in transaction%%' THEN 'idle in transaction (client''s turn)'
                 ELSE coalesce(state, '?') END
          FROM pg_stat_activity
         WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'
    """

    def __init__(self, connect, database: str, interval: float = 0.02):
        self.connect, self.database, self.interval = connect, database, interval
        self.counts: Counter = Counter()
        self.samples = 0
        self._stop = threading.Event()

    def _run(self):
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                while not self._stop.wait(self.interval):
                    cur.execute(self.QUERY, (self.database,))
                    rows = [r[0] for r in cur.fetchall()]
                    if not any(r != "idle" for r in rows):
                        continue  # nothing happening: not part of the picture
                    self.samples += 1
                    self.counts.update(rows)
        finally:
            conn.close()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="pg-activity", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        return False

    def summary(self) -> dict:
        """The average number of connections in each state over the busy samples."""
        if not self.samples:
            return {}
        return {state: round(n / self.samples, 2) for state, n in self.counts.most_common()}


class StatementLog:
    """The statements one unit of work sends to PostgreSQL, read from the server's log of a
    database with ``log_statement = 'all'`` (new sessions only)."""

    def __init__(self, log_path: Path):
        self.log_path = Path(log_path)
        self._offset = 0

    def mark(self) -> None:
        time.sleep(0.05)  # the server writes its log asynchronously to the statement
        self._offset = self.log_path.stat().st_size

    def read(self) -> list[str]:
        time.sleep(0.1)
        with open(self.log_path, "rb") as handle:
            handle.seek(self._offset)
            text = handle.read().decode("utf-8", "replace")
        statements = []
        for line in text.splitlines():
            if "LOG:  statement: " in line:
                statements.append(line.split("LOG:  statement: ", 1)[1].strip())
            elif statements and line.startswith(("\t", " ")):
                statements[-1] += " " + line.strip()  # a statement written on several lines
        return statements
