"""The plan's faults, done to the running system at their planned times, one after another.

- ``worker_kill``: a ``dramatiq workers`` group SIGKILLed (master and worker processes, mid
  whatever they were doing), then started again;
- ``worker_stop``: a group SIGSTOPped for the planned time, then SIGCONTinued;
- ``redis_restart`` / ``postgres_restart``: the server crashed (SIGKILL, with its children) or
  stopped cleanly, left down for the planned time, then started on the same port with the
  same data.

A fault that starts after its planned time (the one before it ran long) says by how much.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass

from soak.plan import PlannedFault
from tests.integration.test_recovery import killed

START_ATTEMPTS = 3


@dataclass(frozen=True)
class InjectedFault:
    planned: PlannedFault
    started_s: float        # from the start of the load
    took_s: float
    error: str | None = None

    @property
    def late_s(self) -> float:
        return max(0.0, self.started_s - self.planned.at_s)


class FaultInjector:
    def __init__(self, system, redis_server, postgres_server, *, worker_threads: int,
                 stop: threading.Event, say=print):
        self.system = system
        self.servers = {"redis_restart": redis_server, "postgres_restart": postgres_server}
        self.worker_threads = worker_threads
        self.stop = stop
        self.say = say
        self._stopped_groups: set[str] = set()
        self._lock = threading.Lock()
        self.injected: list[InjectedFault] = []
        self._thread: threading.Thread | None = None

    def start(self, load_started: float, faults) -> None:
        self._thread = threading.Thread(target=self._run, args=(load_started, tuple(faults)),
                                        name="soak-faults", daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, load_started: float, faults) -> None:
        for fault in faults:
            if self.stop.wait(max(0.0, load_started + fault.at_s - time.monotonic())):
                return
            started = time.monotonic()
            error = None
            try:
                self.inject(fault)
            except Exception as exc:  # noqa: BLE001 - reported in the summary, fails the run
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
            record = InjectedFault(fault, started - load_started, time.monotonic() - started,
                                   error)
            with self._lock:
                self.injected.append(record)
            late = f", {record.late_s:.1f}s late" if record.late_s >= 1 else ""
            self.say(f"  fault {len(self.injected)}/{len(faults)} at {record.started_s:.0f}s: "
                     f"{fault.describe()} (took {record.took_s:.1f}s{late})"
                     + (f" FAILED: {error}" if error else ""))

    # --- the faults ---------------------------------------------------------------------------
    def inject(self, fault: PlannedFault) -> None:
        if fault.kind == "worker_kill":
            self.system.stop_process(fault.target, sig=signal.SIGKILL)
            self.system.start_workers(processes=1, threads=self.worker_threads,
                                      name=fault.target)
        elif fault.kind == "worker_stop":
            group = self.system.processes[fault.target].pid   # its own session: pid = group
            with self._stopped(fault.target, group):
                self.stop.wait(fault.duration_s)
        elif fault.kind in self.servers:
            server = self.servers[fault.kind]
            if fault.crash:
                with killed(server):
                    self.stop.wait(fault.duration_s)
            else:
                server.stop()
                self.stop.wait(fault.duration_s)
                self._start_again(server)
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")

    @contextlib.contextmanager
    def _stopped(self, name: str, group: int):
        os.killpg(group, signal.SIGSTOP)
        with self._lock:
            self._stopped_groups.add(name)
        try:
            yield
        finally:
            os.killpg(group, signal.SIGCONT)
            with self._lock:
                self._stopped_groups.discard(name)

    def _start_again(self, server) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                server.start()
                return
            except Exception:
                if attempt == START_ATTEMPTS:
                    raise

    def release(self) -> None:
        """Let every stopped worker group go on (SIGCONT): before stopping the system, and
        whatever happened."""
        with self._lock:
            names = list(self._stopped_groups)
        for name in names:
            proc = self.system.processes.get(name)
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
