"""The machine under the benchmark: its load average, and the share of its CPU that other
people's processes took while a figure was measured.

The bench runs on a 2-core machine that others share, so a figure is only read beside what
else ran meanwhile. Ours is this process and every process it started (their CPU time, with
that of their children already ended, from /proc); the machine's busy time less ours is
everyone else's.
"""
from __future__ import annotations

import os
import time

NCPU = os.cpu_count() or 1
TICK = os.sysconf("SC_CLK_TCK")


def loadavg() -> list[float]:
    with open("/proc/loadavg") as handle:
        return [float(x) for x in handle.read().split()[:3]]


def memory_gb() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def _busy_jiffies() -> int:
    """All CPUs' non-idle time since boot (user nice system irq softirq steal)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle


def _tree_jiffies(root: int) -> int:
    """CPU time of ``root`` and its live descendants, each with its ended children's: a
    process that ends is counted in its parent's once reaped, so the sum holds across the
    end of wrk, pgbench or a gunicorn worker."""
    parents, times = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, frontier = times.get(root, 0), [root]
    for _ in range(len(parents) + 1):   # bounded: each process is popped once at most
        if not frontier:
            break
        pid = frontier.pop()
        for child in children.get(pid, ()):
            total += times.get(child, 0)
            frontier.append(child)
    return total


class Machine:
    """``with Machine() as m: …`` then ``m.summary()``: the load average around the window
    and the share of the machine's CPU that processes not ours took during it."""

    def __enter__(self):
        self._t0 = time.monotonic()
        self._load0 = loadavg()
        self._busy0 = _busy_jiffies()
        self._ours0 = _tree_jiffies(os.getpid())
        return self

    def __exit__(self, *exc):
        self.wall_s = time.monotonic() - self._t0
        busy = (_busy_jiffies() - self._busy0) / TICK
        ours = (_tree_jiffies(os.getpid()) - self._ours0) / TICK
        self.others_s = max(0.0, busy - ours)
        self.busy_s = busy
        self.load = [self._load0, loadavg()]
        return False

    def summary(self) -> dict:
        capacity = self.wall_s * NCPU
        return {"wall_s": round(self.wall_s, 2),
                "loadavg_start": self.load[0], "loadavg_end": self.load[1],
                "cpu_busy_share": round(self.busy_s / capacity, 3) if capacity else None,
                # the share of the machine's CPU that other people's processes took
                "cpu_others_share": round(self.others_s / capacity, 3) if capacity else None}
