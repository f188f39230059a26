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

This module must be imported before anything else imports ``prometheus_client``: the
library picks its storage when it is first imported. In a server process that imported it
first, importing this module fails and says so, rather than let the metrics go missing.
"""
from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import shutil
import sys
import tempfile

BASE_DIR_NAME = "topup-metrics"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def server_kind(argv: list[str] | None = None) -> str | None:
    """``"api"`` in a gunicorn worker, ``"workers"`` in a ``dramatiq`` child process."""
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


def choose_directory(kind: str | None, environ=None) -> str | None:
    """Where this process's values go, or None to keep them in the process."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("PROMETHEUS_MULTIPROC_DIR") or environ.get("prometheus_multiproc_dir")
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


# prometheus_client reads PROMETHEUS_MULTIPROC_DIR once, when it is first imported.
_STORAGE_CHOSEN_IN_PROCESS = "prometheus_client" in sys.modules and not (
    os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir"))
MULTIPROCESS_DIR = choose_directory(server_kind())
if MULTIPROCESS_DIR:
    if _STORAGE_CHOSEN_IN_PROCESS:
        # Its values would stay in this process while a scrape reads the shared directory:
        # the server's metrics would go missing without a word.
        raise RuntimeError(
            "prometheus_client was imported before telemetry.metrics in a server process, so "
            "it keeps this process's metrics to itself: import telemetry.metrics first, or "
            "set PROMETHEUS_MULTIPROC_DIR before the server starts")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = MULTIPROCESS_DIR

import prometheus_client  # noqa: E402  (after the directory is chosen)
from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest,
)
from prometheus_client import multiprocess  # noqa: E402

CONTENT_TYPE = CONTENT_TYPE_LATEST

# The process's own metrics (not the library's global registry, which others may fill).
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)

DARAJA_CALLS = Counter(
    "topup_daraja_calls_total",
    "HTTP calls to Daraja, by endpoint (oauth, stkpush, stkquery) and outcome "
    "(ok, pending, invalid_token, connection_failed, ambiguous, throttled, ...).",
    ["endpoint", "outcome"], registry=PROCESS_REGISTRY)
DARAJA_SECONDS = Histogram(
    "topup_daraja_call_duration_seconds",
    "How long Daraja took to answer, by endpoint and outcome.",
    ["endpoint", "outcome"], registry=PROCESS_REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30))
CALLBACK_ACK_SECONDS = Histogram(
    "topup_callback_ack_duration_seconds",
    "From a Daraja callback's arrival to its answer (the body is stored durably first), "
    "by HTTP status of the answer.",
    ["status"], registry=PROCESS_REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
CREDIT_SECONDS = Histogram(
    "topup_credit_latency_seconds",
    "From Daraja accepting the STK push to the wallet's ledger entry, by what confirmed "
    "the payment (callback or query).",
    ["source"], registry=PROCESS_REGISTRY,
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400))
WORKER_MESSAGES = Counter(
    "topup_worker_messages_total",
    "Messages the workers finished, by queue, actor and outcome (ok, error, skipped).",
    ["queue", "actor", "outcome"], registry=PROCESS_REGISTRY)
WORKER_MESSAGE_SECONDS = Histogram(
    "topup_worker_message_duration_seconds",
    "How long a worker spent on a message, by queue and actor.",
    ["queue", "actor"], registry=PROCESS_REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
WORKER_DEAD_LETTERS = Counter(
    "topup_worker_dead_letters_total",
    "Messages the workers moved to a dead-letter queue, by queue and actor.",
    ["queue", "actor"], registry=PROCESS_REGISTRY)


# --- observing -------------------------------------------------------------------------------

def daraja_call(endpoint: str, outcome: str, seconds: float) -> None:
    """The Daraja client's ``on_call`` hook."""
    DARAJA_CALLS.labels(endpoint, outcome).inc()
    DARAJA_SECONDS.labels(endpoint, outcome).observe(max(seconds, 0.0))


def callback_acknowledged(status: int, seconds: float) -> None:
    CALLBACK_ACK_SECONDS.labels(str(status)).observe(max(seconds, 0.0))


def credited(pushed_at: dt.datetime | None, credited_at: dt.datetime | None, source: str) -> None:
    """A top-up was credited: how long after Daraja accepted its push."""
    if pushed_at is None or credited_at is None:
        return
    CREDIT_SECONDS.labels(source).observe(max((credited_at - pushed_at).total_seconds(), 0.0))


# Every message a worker finishes is counted: its label children are looked up once per
# (queue, actor, outcome), not through labels() each time (its checks and lock, ~2.5 us).
_FINISHED: dict[tuple[str, str, str], tuple] = {}


def message_finished(queue: str, actor: str, outcome: str, seconds: float | None) -> None:
    children = _FINISHED.get((queue, actor, outcome))
    if children is None:
        children = _FINISHED[(queue, actor, outcome)] = (
            WORKER_MESSAGES.labels(queue, actor, outcome),
            WORKER_MESSAGE_SECONDS.labels(queue, actor))
    children[0].inc()
    if seconds is not None:
        children[1].observe(max(seconds, 0.0))


def dead_lettered(queue: str, actor: str) -> None:
    WORKER_DEAD_LETTERS.labels(queue, actor).inc()


# --- answering a scrape ----------------------------------------------------------------------

class _ThisProcess:
    def collect(self):
        return PROCESS_REGISTRY.collect()


def render(collectors=(), directory: str | None = None) -> bytes:
    """The Prometheus text exposition: the counted metrics (summed over the server's
    processes when they share a directory) and whatever ``collectors`` read now."""
    registry = CollectorRegistry(auto_describe=False)
    directory = directory or MULTIPROCESS_DIR
    if directory:
        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_ThisProcess())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


__all__ = ["CONTENT_TYPE", "MULTIPROCESS_DIR", "render", "daraja_call", "callback_acknowledged",
           "credited", "message_finished", "dead_lettered", "prometheus_client"]
