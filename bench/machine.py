"""The machine under the benchmark: load, who used the CPU, and how much memory.

The bench runs on a 2-core machine that other people share, so every measurement records
the load average around it and splits the CPU time it saw into ours (this harness and every
process it started, by role) and foreign (everything else), from /proc.
"""
from __future__ import annotations

import os
import threading
import time

NCPU = os.cpu_count() or 1
TICK = os.sysconf("SC_CLK_TCK")


def loadavg() -> list[float]:
    with open("/proc/loadavg") as handle:
        return [float(x) for x in handle.read().split()[:3]]


def _busy_jiffies() -> int:
    """All CPUs' non-idle time since boot (user nice system irq softirq steal)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle


def _proc_jiffies(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def descendants(root: int) -> dict[int, int]:
    """{pid: parent pid} for every live descendant of ``root`` (one pass over /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            continue
        parents[int(entry)] = int(stat[stat.rfind(")") + 2:].split()[1])
    found, frontier = {}, [root]
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    while frontier:
        pid = frontier.pop()
        for child in children.get(pid, ()):
            found[child] = pid
            frontier.append(child)
    return found


class Roles:
    """Which process is which: a started process's pid names a role (``api``, ``workers``,
    ``postgres`` …) that its descendants inherit; this harness is ``harness``."""

    def __init__(self):
        self._roots: dict[int, str] = {os.getpid(): "harness"}
        self._lock = threading.Lock()

    def add(self, pid: int, role: str) -> None:
        with self._lock:
            self._roots[pid] = role

    def classify(self) -> dict[int, str]:
        tree = descendants(os.getpid())
        with self._lock:
            roots = dict(self._roots)
        roles = {os.getpid(): "harness"}
        for pid in tree:
            chain, cursor = [], pid
            while cursor not in roots and cursor in tree:
                chain.append(cursor)
                cursor = tree[cursor]
            role = roots.get(cursor, "harness")
            roles[pid] = role
        return roles


class CpuMeter:
    """CPU seconds by role over a window, and the machine's CPU used by everyone else.

    A thread samples every process of ours every ``interval`` s and keeps the last value seen,
    so a process that ends inside the window (wrk, pgbench) still counts up to its last sample.
    """

    def __init__(self, roles: Roles, interval: float = 0.25):
        self.roles = roles
        self.interval = interval
        self._first: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._role: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = None

    def _sample(self, first: bool = False) -> None:
        for pid, role in self.roles.classify().items():
            value = _proc_jiffies(pid)
            if value is None:
                continue
            self._role[pid] = role
            if pid not in self._first:
                # a process born inside the window counts from zero
                self._first[pid] = value if first else 0
            self._last[pid] = value

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._t0 = time.monotonic()
        self._busy0 = _busy_jiffies()
        self._load0 = loadavg()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall_s = time.monotonic() - self._t0
        self.busy_s = (_busy_jiffies() - self._busy0) / TICK
        self.load = [self._load0, loadavg()]
        by_role: dict[str, float] = {}
        for pid, last in self._last.items():
            role = self._role[pid]
            by_role[role] = by_role.get(role, 0.0) + (last - self._first.get(pid, 0)) / TICK
        self.by_role = {k: round(v, 3) for k, v in sorted(by_role.items(), key=lambda kv: -kv[1])}
        ours = sum(by_role.values())
        self.ours_s = ours
        self.foreign_s = max(0.0, self.busy_s - ours)
        return False

    def summary(self) -> dict:
        capacity = self.wall_s * NCPU
        return {
            "wall_s": round(self.wall_s, 2),
            "loadavg_start": self.load[0], "loadavg_end": self.load[1],
            "cpu_busy_share": round(self.busy_s / capacity, 3) if capacity else None,
            "cpu_ours_s": round(self.ours_s, 2),
            "cpu_foreign_s": round(self.foreign_s, 2),
            # the share of the machine's CPU that other people's processes took meanwhile
            "cpu_foreign_share": round(self.foreign_s / capacity, 3) if capacity else None,
            "cpu_s_by_role": self.by_role,
        }


def peak_rss_mb(pid: int) -> float | None:
    """The kernel's high-water mark of a process's resident memory (VmHWM), in MiB."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def process_tree(pid: int) -> list:
    """``pid`` and its descendants (psutil processes). psutil is imported here: it is a bench
    dependency (``.[bench]``), and the unit tests import this module's neighbours without it."""
    import psutil
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
