"""Idle guard for a shared 2-core machine (as in bench/throughput): wait for idle CPUs before a
timed phase, and add up the CPU time of foreign processes during it: everything except this
process, the PostgreSQL backends of the bench's database and PostgreSQL's background processes
(other databases' backends, e.g. a test suite's, are foreign)."""

from __future__ import annotations

import os
import re
import sys
import time

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_busy(sample_s: float = 1.0) -> float | None:
    """Share of all CPUs busy over `sample_s` (Linux /proc/stat), None elsewhere."""

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)

    try:
        total0, idle0 = read()
        time.sleep(sample_s)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else None


def wait_quiet(max_wait_s: float, threshold: float) -> float | None:
    """Wait (up to `max_wait_s`) until the CPUs are mostly idle; returns the last busy share."""
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy()
    warned = False
    while busy is not None and busy > threshold and time.monotonic() < deadline:
        if not warned:
            print(f"  machine busy ({busy:.0%} CPU) before a timed phase, waiting up to {max_wait_s:.0f}s",
                  file=sys.stderr, flush=True)
            warned = True
        busy = cpu_busy()
    return busy


def _foreign_ticks(dbname: str) -> dict[int, int]:
    me = os.getpid()
    out: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for name in entries:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("postgres:") and (f" {dbname} " in cmd or not _is_client_backend(cmd)):
            continue  # our database's backends, and the server's own background processes
        fields = stat.rsplit(")", 1)[1].split()
        out[int(name)] = int(fields[11]) + int(fields[12])  # utime + stime
    return out


def _is_client_backend(cmd: str) -> bool:
    """`postgres: [CLUSTER: ]USER DB HOST(PORT) STATE` or `... [local] ...`, not `postgres: 15/main: walwriter`."""
    return "[local]" in cmd or re.search(r" \S+\(\d+\) ", cmd) is not None


class Foreign:
    """CPUs kept busy by foreign processes between start() and stop() (0.5 = half a core)."""

    dbname = ""  # our database: its backends are ours

    def start(self) -> Foreign:
        self.t0 = time.monotonic()
        self.ticks0 = _foreign_ticks(self.dbname)
        return self

    def stop(self) -> float:
        ticks1 = _foreign_ticks(self.dbname)
        secs = max(time.monotonic() - self.t0, 1e-9)
        used = sum(t - self.ticks0.get(pid, 0) for pid, t in ticks1.items())
        return used / TICK / secs
