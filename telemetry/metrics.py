"""Prometheus metrics (prometheus-client): what they are, and how a scrape is answered.

Two kinds of metric:

- **counted where it happens**, in the process that did it: Daraja calls by endpoint and
  outcome with their latency, credit latency from push to ledger, callback acknowledgement
  latency, messages the workers finished. ``gunicorn`` and ``dramatiq workers`` run several
  processes, so these use prometheus-client's multiprocess mode: every process of one server
  writes its values to files in a directory they share, and a scrape adds them up.
- **read from the record at scrape time**: top-ups by status and webhook deliveries (the
  database), queue depths (Redis). Those are collectors that the caller passes to
  :func:`render` (see :mod:`telemetry.collectors`), never counted twice.

The shared directory is ``PROMETHEUS_MULTIPROC_DIR`` when it is set (empty it before the
server starts). Otherwise a gunicorn worker or a ``dramatiq workers`` process uses one
directory per server run, under the system's temporary directory, named after its parent
(the master process) and that parent's start time: every process of one run finds the same
directory, a restart starts from zero, and directories of runs that ended are removed.
Anywhere else (tests, ``topupctl``) the values live in the process.

Importing this module does nothing. prometheus-client picks its storage once, when it is
first imported, from the ``PROMETHEUS_MULTIPROC_DIR`` environment variable; so the process's
start-up (:mod:`bootstrap`) calls :func:`choose_storage` first, and the metrics, with the
library, are created on first use (:func:`instruments`). A server process that imported the
library before its start-up chose a directory is refused, rather than let its metrics go
missing.
"""
from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
from typing import MutableMapping

BASE_DIR_NAME = "topup-metrics"
# prometheus-client's switch to multiprocess mode (it also reads the lower-case spelling)
DIRECTORY_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def server_kind(argv: list[str] | None = None) -> str | None:
    """``"api"`` in a gunicorn process, ``"workers"`` in a process the ``dramatiq`` command
    started (its worker processes and its forks), else None."""
    argv = sys.argv if argv is None else argv
    program = argv[0] if argv else ""
    name = os.path.basename(program)
    if name == "gunicorn" or program.endswith(os.path.join("gunicorn", "__main__.py")):
        return "api"
    if name == "dramatiq" or program.endswith(os.path.join("dramatiq", "__main__.py")):
        if multiprocessing.current_process().name != "MainProcess":
            return "workers"
    return None


def _remove_finished_runs(base: str) -> None:
    try:
        entries = os.listdir(base)
    except OSError:
        return
    for entry in entries:
        parts = entry.rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        if _process_start(int(parts[1])) != parts[2]:
            shutil.rmtree(os.path.join(base, entry), ignore_errors=True)


def choose_directory(kind: str | None, environ: MutableMapping[str, str]) -> str | None:
    """Where this process's values go (created if need be), or None to keep them in the
    process."""
    explicit = next((environ[name] for name in DIRECTORY_VARIABLES if environ.get(name)), None)
    if explicit:
        os.makedirs(explicit, exist_ok=True)
        return explicit
    if kind is None:
        return None
    parent = os.getppid()
    started = _process_start(parent) or "0"
    base = os.path.join(tempfile.gettempdir(), BASE_DIR_NAME)
    os.makedirs(base, exist_ok=True)
    _remove_finished_runs(base)
    path = os.path.join(base, f"{kind}-{parent}-{started}")
    os.makedirs(path, exist_ok=True)
    return path


_directory: str | None = None


def choose_storage(environ: MutableMapping[str, str], argv: list[str] | None = None
                   ) -> str | None:
    """Decide where this process's values go, before anything counts: the directory its
    server's processes share (written to ``environ``, the process's environment, for
    prometheus-client to read when it is imported), or None to keep them in the process."""
    global _directory
    directory = choose_directory(server_kind(argv), environ)
    if directory:
        named_before = any(environ.get(name) for name in DIRECTORY_VARIABLES)
        if "prometheus_client" in sys.modules and not named_before:
            # Its values would stay in this process while a scrape reads the shared
            # directory: the server's metrics would go missing without a word.
            raise RuntimeError(
                "prometheus_client was imported before this server process's start-up chose "
                "where its metrics go, so it keeps them to itself: configure the process "
                "(bootstrap.configure) before anything imports prometheus_client, or set "
                "PROMETHEUS_MULTIPROC_DIR before the server starts")
        environ[DIRECTORY_VARIABLES[0]] = directory
    _directory = directory
    return directory


def directory() -> str | None:
    """The directory this process counts into (None: its values live in the process)."""
    return _directory


# --- the metrics -----------------------------------------------------------------------------

class Instruments:
    """The metrics this process counts, on a registry of their own (not the library's global
    one, which others may fill)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram
        self.registry = CollectorRegistry(auto_describe=True)
        self.daraja_calls = Counter(
            "topup_daraja_calls_total",
            "HTTP calls to Daraja, by endpoint (oauth, stkpush, stkquery) and outcome "
            "(ok, pending, invalid_token, connection_failed, ambiguous, throttled, ...).",
            ["endpoint", "outcome"], registry=self.registry)
        self.daraja_seconds = Histogram(
            "topup_daraja_call_duration_seconds",
            "How long Daraja took to answer, by endpoint and outcome.",
            ["endpoint", "outcome"], registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30))
        self.callback_ack_seconds = Histogram(
            "topup_callback_ack_duration_seconds",
            "From a Daraja callback's arrival to its answer (the body is stored durably first), "
            "by HTTP status of the answer.",
            ["status"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.credit_seconds = Histogram(
            "topup_credit_latency_seconds",
            "From Daraja accepting the STK push to the wallet's ledger entry, by what confirmed "
            "the payment (callback or query).",
            ["source"], registry=self.registry,
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400))
        self.worker_messages = Counter(
            "topup_worker_messages_total",
            "Messages the workers finished, by queue, actor and outcome (ok, error, skipped).",
            ["queue", "actor", "outcome"], registry=self.registry)
        self.worker_message_seconds = Histogram(
            "topup_worker_message_duration_seconds",
            "How long a worker spent on a message, by queue and actor.",
            ["queue", "actor"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.worker_dead_letters = Counter(
            "topup_worker_dead_letters_total",
            "Messages the workers moved to a dead-letter queue, by queue and actor.",
            ["queue", "actor"], registry=self.registry)
        # Every message a worker finishes is counted: its label children are looked up once
        # per (queue, actor, outcome), not through labels() each time (its checks and lock,
        # ~2.5 us).
        self.finished: dict[tuple[str, str, str], tuple] = {}


_instruments: Instruments | None = None
_instruments_lock = threading.Lock()


def instruments() -> Instruments:
    """This process's metrics, created on first use: after its start-up chose their storage."""
    global _instruments
    if _instruments is None:
        with _instruments_lock:
            if _instruments is None:
                _instruments = Instruments()
    return _instruments


# --- observing -------------------------------------------------------------------------------

def daraja_call(endpoint: str, outcome: str, seconds: float) -> None:
    """The Daraja client's ``on_call`` hook."""
    counted = instruments()
    counted.daraja_calls.labels(endpoint, outcome).inc()
    counted.daraja_seconds.labels(endpoint, outcome).observe(max(seconds, 0.0))


def callback_acknowledged(status: int, seconds: float) -> None:
    instruments().callback_ack_seconds.labels(str(status)).observe(max(seconds, 0.0))


def credited(pushed_at: dt.datetime | None, credited_at: dt.datetime | None, source: str) -> None:
    """A top-up was credited: how long after Daraja accepted its push."""
    if pushed_at is None or credited_at is None:
        return
    instruments().credit_seconds.labels(source).observe(
        max((credited_at - pushed_at).total_seconds(), 0.0))


def message_finished(queue: str, actor: str, outcome: str, seconds: float | None) -> None:
    counted = instruments()
    children = counted.finished.get((queue, actor, outcome))
    if children is None:
        children = counted.finished[(queue, actor, outcome)] = (
            counted.worker_messages.labels(queue, actor, outcome),
            counted.worker_message_seconds.labels(queue, actor))
    children[0].inc()
    if seconds is not None:
        children[1].observe(max(seconds, 0.0))


def dead_lettered(queue: str, actor: str) -> None:
    instruments().worker_dead_letters.labels(queue, actor).inc()


# --- answering a scrape ----------------------------------------------------------------------

class _ThisProcess:
    def collect(self):
        return instruments().registry.collect()


def content_type() -> str:
    """The media type of :func:`render`'s answer."""
    from prometheus_client import CONTENT_TYPE_LATEST
    return CONTENT_TYPE_LATEST


def render(collectors=(), directory: str | None = None) -> bytes:
    """The Prometheus text exposition: the counted metrics (summed over the server's
    processes when they share a directory) and whatever ``collectors`` read now."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    registry = CollectorRegistry(auto_describe=False)
    directory = directory or _directory
    if directory:
        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_ThisProcess())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)
