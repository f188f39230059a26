"""Real redis-server and PostgreSQL processes on 127.0.0.1, for development tools: the
integration tests and the benchmark (``bench/``) both start their servers with it, so it lives
in the package, which both may import, and neither imports the other.

Importable without pytest::

    from topupctl.devservers import RedisServer, PostgresServer, find_free_port, servers_available

    r = RedisServer(tmpdir); r.start(); r.url      # redis://127.0.0.1:P/0
    p = PostgresServer(tmpdir); p.start(); p.url   # postgresql://topup@127.0.0.1:P/topup
    p.create_database("case_1")                    # a fresh empty database, its URL
    r.restart(); p.kill(); p.restart()             # same port, same data
    r.stop(); p.close()                            # close() = stop() + remove scratch dirs

Both bind 127.0.0.1 on a free port (never 6379/5432, which a developer may be using). Each
server's output goes to a log file in its tmpdir; a start that fails or times out raises
:class:`ServerStartError` with the last lines of that log.

Redis runs with the broker's production settings: ``appendonly yes``,
``appendfsync everysec``, no RDB snapshots, ``maxmemory-policy noeviction``.

PostgreSQL refuses to run as root. When the effective uid is 0, initdb and postgres run as
the ``postgres`` user (created with useradd if missing), and the data and socket directories
live in a ``/tmp/topup-pg-*`` directory owned by that user, because pytest's tmpdirs
(``/tmp/pytest-of-root``, mode 0700) are out of its reach; ``<tmpdir>/pgdata`` is a symlink
to the data directory. Not root: everything lives in tmpdir and runs as the current user.

No server outlives the Python process that started it: each runs in its own session, an
``atexit`` hook SIGKILLs whatever is still running, and (when started from the main thread on
Linux) the kernel SIGKILLs it if that process dies without running atexit hooks.
"""
from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = [
    "RedisServer",
    "PostgresServer",
    "ServerStartError",
    "find_free_port",
    "find_postgres_bindir",
    "servers_available",
    "wait_until",
]

HOST = "127.0.0.1"
RESERVED_PORTS = frozenset({5432, 6379})  # the defaults: a developer's own servers
PG_USER = "postgres"  # system account that runs PostgreSQL when we are root
PG_ROLE = "topup"     # database superuser created by initdb
PG_DATABASE = "topup"

_handed_out_ports: set[int] = set()
_ports_lock = threading.Lock()


class ServerStartError(RuntimeError):
    """A server did not come up; the message ends with the tail of its log."""


def find_free_port(host: str = HOST) -> int:
    """A TCP port that nothing listens on now (bound on port 0, then released).

    Never 6379 or 5432, and never a port already handed out by this process, so two servers
    created before either starts do not collide.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        with _ports_lock:
            if port in RESERVED_PORTS or port in _handed_out_ports:
                continue
            _handed_out_ports.add(port)
            return port
    raise RuntimeError("no free TCP port found")


def _version_key(path: str) -> tuple:
    name = Path(path).parent.name  # /usr/lib/postgresql/<version>/bin
    return tuple(int(part) if part.isdigit() else -1 for part in re.split(r"[.]", name))


def find_postgres_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``: PATH first, else the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian keeps them off PATH)."""
    postgres = shutil.which("postgres")
    if postgres:
        # resolved: /usr/local/bin/postgres may be a symlink into the real bin directory,
        # which also holds initdb and psql
        bindir = Path(postgres).resolve().parent
        if os.access(bindir / "initdb", os.X_OK):
            return bindir
    candidates = [
        path for path in glob.glob("/usr/lib/postgresql/*/bin")
        if os.access(os.path.join(path, "postgres"), os.X_OK)
        and os.access(os.path.join(path, "initdb"), os.X_OK)
    ]
    if not candidates:
        return None
    return Path(max(candidates, key=_version_key))


def servers_available() -> tuple[bool, str]:
    """``(True, "")`` when redis-server and PostgreSQL can be started here, else
    ``(False, reason)``."""
    missing = []
    if not shutil.which("redis-server"):
        missing.append("redis-server is not on PATH (Debian: apt-get install redis-server)")
    if find_postgres_bindir() is None:
        missing.append("PostgreSQL binaries (initdb, postgres) are neither on PATH nor in "
                       "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql-15)")
    if os.geteuid() == 0 and not _user_exists(PG_USER) and not shutil.which("useradd"):
        missing.append(f"running as root, no '{PG_USER}' user to run PostgreSQL and no useradd")
    if missing:
        return False, "; ".join(missing)
    return True, ""


# --- process bookkeeping --------------------------------------------------------------------

_live_servers: set["_Server"] = set()
_scratch_dirs: list[tuple[int, Path]] = []  # (creating pid, directory outside any tmpdir)
_live_lock = threading.Lock()


@atexit.register
def _kill_leftovers() -> None:
    """SIGKILL servers still running and remove scratch directories, but only those of this
    process (a forked child exiting normally must not kill its parent's servers)."""
    me = os.getpid()
    with _live_lock:
        servers = [server for server in _live_servers if server._owner_pid == me]
        scratch = [path for pid, path in _scratch_dirs if pid == me]
    for server in servers:
        try:
            server.kill()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
    for path in scratch:
        shutil.rmtree(path, ignore_errors=True)


def _scratch_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    with _live_lock:
        _scratch_dirs.append((os.getpid(), path))
    return path


def _parent_death_signal():
    """A preexec_fn asking the kernel to SIGKILL the child when its parent dies (Linux).

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only used from the
    main thread; it runs after Popen has switched user, since a uid change clears it.
    """
    if (not sys.platform.startswith("linux")
            or threading.current_thread() is not threading.main_thread()):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)

    return preexec


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _tail(path: Path, lines: int = 40, start: int = 0) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            text = handle.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc; empty elsewhere)."""
    children = []
    for entry in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(entry, "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[1] == str(pid):
            children.append(int(entry.split("/")[2]))
    return children


def wait_until(predicate, timeout: float = 10.0, *, interval: float = 0.05,
               message: str = "the condition", error: type[Exception] = TimeoutError):
    """Poll ``predicate`` until it answers something truthy (returned); ``error`` after
    ``timeout`` seconds. The one wait of the tests, the bench and the soak: bounded, never a
    bare sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait until each process has exited (a zombie counts: it holds no memory)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat", "rb") as handle:
                    stat = handle.read().decode("ascii", "replace")
            except OSError:
                break
            if stat[stat.rfind(")") + 2:].startswith(("Z", "X")):
                break
            time.sleep(0.01)


class _Server:
    """A process started in its own session, its output appended to ``log_path``."""

    name = "server"
    start_timeout = 10.0
    stop_timeout = 15.0
    stop_signal = signal.SIGTERM

    def __init__(self, tmpdir: str | os.PathLike) -> None:
        self.tmpdir = Path(tmpdir).resolve()
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = find_free_port()
        self.log_path = self.tmpdir / f"{self.name}.log"
        self.process: subprocess.Popen | None = None
        self._started_once = False
        self._closed = False
        self._owner_pid = os.getpid()

    # subclasses: _command(), _popen_kwargs(), _prepare(), _ready() -> bool
    def _popen_kwargs(self) -> dict:
        return {}

    def _prepare(self) -> None:
        pass

    def _remove_scratch(self) -> None:
        pass

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _log_line(self, text: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} devservers: {text}\n")

    def start(self, timeout: float | None = None) -> "_Server":
        """Start and wait until the server answers; raise ServerStartError otherwise.

        On the very first start a port taken in the meantime by someone else is replaced by
        another free port; later starts (restart) keep the port.
        """
        if self.running:
            raise RuntimeError(f"{self.name} already running (pid {self.pid})")
        if self._closed:
            raise RuntimeError(f"{self.name} was closed; its data is gone")
        self._prepare()
        attempts = 1 if self._started_once else 3
        for attempt in range(1, attempts + 1):
            try:
                self._spawn_and_wait(timeout or self.start_timeout)
                break
            except ServerStartError as exc:
                if attempt < attempts and "Address already in use" in str(exc):
                    self.port = find_free_port()
                    continue
                raise
        self._started_once = True
        return self

    def _spawn_and_wait(self, timeout: float) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = self._command()
        self._log_line("starting: " + " ".join(
            repr(a) if not a or " " in a else a for a in command))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, **self._popen_kwargs())
        self._owner_pid = os.getpid()
        with _live_lock:
            _live_servers.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self._forget()
                raise ServerStartError(
                    f"{self.name} exited with code {code} while starting on port {self.port}; "
                    f"last lines of {self.log_path}:\n{_tail(self.log_path, start=offset)}")
            # still ours: a stranger on a port taken meanwhile would answer too
            if self._ready() and self.process.poll() is None:
                return
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(
                    f"{self.name} not ready on port {self.port} after {timeout:.0f} s; "
                    f"last lines of {self.log_path}:\n{_tail(self.log_path, start=offset)}")
            time.sleep(0.05)

    def _forget(self) -> None:
        with _live_lock:
            _live_servers.discard(self)

    def _signal_group(self, signum: int) -> None:
        # The server runs in its own session: its pid is its process group, which also holds
        # its children (PostgreSQL backends).
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown and wait; SIGKILL if it does not finish in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout or self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._log_line(f"no exit {timeout or self.stop_timeout} s after "
                               f"{signal.Signals(self.stop_signal).name}: SIGKILL")
                self.kill()
                return
        self._signal_group(signal.SIGKILL)  # stray children, if any
        self._log_line(f"stopped (exit code {self.process.returncode})")
        self._forget()

    def kill(self) -> None:
        """SIGKILL the server and all its child processes (a crash, for recovery tests).

        PostgreSQL backends put themselves in their own sessions, so they are found through
        /proc: the server is frozen (SIGSTOP) so it forks nothing meanwhile, its children are
        SIGKILLed, then the server; kill() returns once they are all gone, so a restart()
        never meets a backend of the dead server still attached to shared memory.
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            pid = self.process.pid
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
            children = _children_of(pid)
            for child in children:
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._signal_group(signal.SIGKILL)
            self.process.kill()
            self.process.wait()
            _wait_gone(children, timeout=10)
            self._log_line(f"killed with SIGKILL (and {len(children)} child processes)")
        self._forget()

    def restart(self, timeout: float | None = None) -> "_Server":
        """Stop (if running) and start again on the same port with the same data."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop for good and remove scratch directories kept outside tmpdir (PostgresServer
        as root keeps its data there): the server cannot be started again."""
        self.stop()
        self._closed = True
        self._remove_scratch()

    def __enter__(self):
        return self.start() if not self.running else self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


# --- Redis ----------------------------------------------------------------------------------

class RedisServer(_Server):
    """``redis-server`` with AOF (everysec), no RDB snapshots, no eviction."""

    name = "redis"
    start_timeout = 10.0
    stop_signal = signal.SIGTERM  # same as SHUTDOWN: flushes and fsyncs the AOF

    def __init__(self, tmpdir: str | os.PathLike, executable: str | None = None) -> None:
        super().__init__(tmpdir)
        self.executable = executable or shutil.which("redis-server") or "redis-server"
        self.dir = self.tmpdir

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", "",  # stdout, i.e. our log file
        ]

    def _popen_kwargs(self) -> dict:
        preexec = _parent_death_signal()
        return {"preexec_fn": preexec} if preexec else {}

    def _ready(self) -> bool:
        try:
            return self.command_raw(b"PING\r\n").startswith(b"+PONG")
        except OSError:
            return False

    def command_raw(self, payload: bytes, timeout: float = 1.0) -> bytes:
        """Send raw RESP/inline bytes, return the first reply chunk (for readiness checks)."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(payload)
            return sock.recv(4096)


# --- PostgreSQL -----------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _ensure_pg_user() -> pwd.struct_passwd:
    """The ``postgres`` system account, created if missing (we are root)."""
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        pass
    command = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
               "--shell", "/usr/sbin/nologin"]
    try:
        import grp

        grp.getgrnam(PG_USER)
        command += ["--gid", PG_USER]  # the group exists already (leftover of a package)
    except KeyError:
        command += ["--user-group"]
    result = subprocess.run(command + [PG_USER], capture_output=True, text=True)
    if result.returncode != 0 and not _user_exists(PG_USER):  # 9: created meanwhile
        raise RuntimeError(f"useradd {PG_USER} failed: {result.stderr.strip()}")
    return pwd.getpwnam(PG_USER)


class PostgresServer(_Server):
    """A private PostgreSQL cluster: superuser ``topup``, trust auth, database ``topup``."""

    name = "postgres"
    start_timeout = 30.0  # crash recovery after kill() can take a few seconds
    stop_timeout = 30.0
    stop_signal = signal.SIGINT  # "fast" shutdown: disconnects clients, then checkpoints

    def __init__(self, tmpdir: str | os.PathLike, bindir: str | os.PathLike | None = None) -> None:
        super().__init__(tmpdir)
        found = Path(bindir) if bindir else find_postgres_bindir()
        if found is None:
            raise RuntimeError(servers_available()[1])
        self.bindir = found
        self.as_root = os.geteuid() == 0
        self._needs_database = False
        self._scratch: list[Path] = []  # directories outside tmpdir, removed by close()
        if self.as_root:
            # Out of pytest's root-only tmpdir, in a directory the postgres user owns.
            account = _ensure_pg_user()
            self._uid, self._gid = account.pw_uid, account.pw_gid
            self.base = _scratch_dir("topup-pg-")
            self._scratch.append(self.base)
            os.chown(self.base, self._uid, self._gid)
        else:
            self.base = self.tmpdir
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "sock"
        if len(str(self.socket_dir)) > 80:  # unix socket paths are limited to 107 bytes
            self.socket_dir = _scratch_dir("topup-pgsock-")
            self._scratch.append(self.socket_dir)
        if self.as_root:
            link = self.tmpdir / "pgdata"
            if not link.exists() and not link.is_symlink():
                link.symlink_to(self.data_dir)
        self._initialised = (self.data_dir / "PG_VERSION").exists()

    @property
    def url(self) -> str:
        return self.database_url(PG_DATABASE)

    def database_url(self, name: str) -> str:
        return f"postgresql://{PG_ROLE}@{self.host}:{self.port}/{name}"

    def _popen_kwargs(self) -> dict:
        kwargs: dict = {"cwd": str(self.base), "env": self._env()}
        if self.as_root:
            kwargs.update(user=self._uid, group=self._gid, extra_groups=[])
        preexec = _parent_death_signal()
        if preexec:
            kwargs["preexec_fn"] = preexec
        return kwargs

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        return env

    def _prepare(self) -> None:
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if self.as_root:
            os.chown(self.socket_dir, self._uid, self._gid)
        if self._initialised:
            return
        command = [str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", PG_ROLE,
                   "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]
        self._log_line("initdb: " + " ".join(command))
        kwargs = self._popen_kwargs()
        kwargs.pop("preexec_fn", None)  # a short-lived child; no need for parent-death
        with open(self.log_path, "ab") as log:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, timeout=120, **kwargs)
        if result.returncode != 0:
            raise ServerStartError(f"initdb exited with code {result.returncode}; last lines "
                                   f"of {self.log_path}:\n{_tail(self.log_path)}")
        self._initialised = True
        self._needs_database = True

    def _command(self) -> list[str]:
        return [
            str(self.bindir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-k", str(self.socket_dir),
            "-h", self.host,
            "-c", "fsync=on",
            "-c", "max_connections=200",
        ]

    def _ready(self) -> bool:
        try:
            self._run_sql("SELECT 1", database="postgres", connect_timeout=2)
            return True
        except _ConnectError:
            return False

    def start(self, timeout: float | None = None) -> "PostgresServer":
        super().start(timeout)
        if self._needs_database:
            self._run_sql(f'CREATE DATABASE "{PG_DATABASE}"')
            self._needs_database = False
        return self

    def create_database(self, name: str) -> str:
        """Create an empty database (from template0) and return its URL."""
        if not _IDENTIFIER.match(name):
            raise ValueError(f"database name must match {_IDENTIFIER.pattern}: {name!r}")
        if not self.running:
            raise RuntimeError("start the server before creating databases")
        self._run_sql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.database_url(name)

    def _run_sql(self, sql: str, database: str = "postgres", connect_timeout: int = 10) -> None:
        """Run one statement in autocommit over TCP (psycopg2, or psql if it is missing)."""
        try:
            import psycopg2
        except ImportError:
            psycopg2 = None
        if psycopg2 is not None:
            try:
                conn = psycopg2.connect(host=self.host, port=self.port, user=PG_ROLE,
                                        dbname=database, connect_timeout=connect_timeout)
            except psycopg2.OperationalError as exc:
                raise _ConnectError(str(exc)) from exc
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(sql)
            finally:
                conn.close()
            return
        env = dict(self._env(), PGCONNECT_TIMEOUT=str(connect_timeout))
        result = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.host,
             "-p", str(self.port), "-U", PG_ROLE, "-d", database, "-c", sql],
            capture_output=True, text=True, env=env, timeout=connect_timeout + 30)
        if result.returncode == 2:
            raise _ConnectError(result.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")

    def _remove_scratch(self) -> None:
        if self.running:
            return
        while self._scratch:
            shutil.rmtree(self._scratch.pop(), ignore_errors=True)


class _ConnectError(Exception):
    pass
