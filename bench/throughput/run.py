"""Throughput benchmark: our PostgresBroker side by side with its peers, in one run.

Peers: Dramatiq's RedisBroker and RabbitmqBroker (with and without publisher
confirms), Celery (Redis broker, 8 threads), dramatiq-postgres, pgqueuer, and
Dramatiq's StubBroker (the worker's ceiling, with Dramatiq's middleware or ours).
One command runs everything and prints the tables::

    python bench/throughput/run.py [--messages 20000] [--rounds 3] [--only ours,redis,...]
                                   [--json out.json] [--markdown out.md]

Every (system, measurement) pair runs in its own subprocess (``sys_<name>.py
measure <measurement>``) with a fresh database / keyspace / queue, under the same
harness (``harness.py``). With ``--rounds N`` every pair runs N times, the systems
taking turns within each round (round-robin, the order rotated each round); each
cell is the median, with the min-max over the rounds. Peers with clashing
dependencies live in their own virtualenvs under ``<repo>/.bench-venvs/<name>``,
created on first use and reused afterwards. Our broker runs with the interpreter
given by ``--ours-python`` (default: this one) with the repository root on
PYTHONPATH, so the working tree is what gets measured. A peer whose server is not
reachable (RabbitMQ, Redis) is skipped with one line; the run goes on.

Only the standard library is required; ``rich`` is used for the tables when
importable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENVS = REPO / ".bench-venvs"

MEASUREMENTS: dict[str, str] = {
    "enqueue_1": "enqueue, send() x1 producer",
    "enqueue_4": "enqueue, send() x4 producers",
    "enqueue_bulk": "enqueue, bulk (1000/call)",
    "drain_1x8": "drain backlog, 1 proc x 8",
    "drain_2x8": "drain backlog, 2 procs x 8",
    "e2e": "end-to-end, 1 producer + 1x8 worker",
    "latency": "idle pickup latency p50 / p99",
}
#: Measurements of our broker alone, each with its own table.
OURS_ONLY: dict[str, str] = {
    "topics": "topic with concurrency 8 vs unlimited queue, drain 1 proc x 8",
    "backlog": "cost of a deep backlog: 10k vs 1M pending",
}
ALL_MEASUREMENTS = {**MEASUREMENTS, **OURS_ONLY}
ENQUEUES = ("enqueue_1", "enqueue_4", "enqueue_bulk")

# Pinned requirement sets of the peers' virtualenvs.
VENV_SPECS: dict[str, list[str]] = {
    "dramatiq-redis": ["dramatiq[redis]==2.2.1", "redis==8.1.0"],
    "dpg": ["dramatiq-postgres==1.4.0", "dramatiq==2.2.1", "psycopg[binary]==3.3.9"],
    "pgq": ["pgqueuer[asyncpg]==1.6.0", "psycopg[binary]==3.3.9"],
    "dramatiq-rabbit": ["dramatiq[rabbitmq]==2.2.1", "pika==1.4.4"],
    "celery": ["celery[redis]==5.7.0", "kombu==5.7.0", "redis==8.1.0"],
}


@dataclass
class SystemSpec:
    key: str
    label: str
    script: str
    venv: str | None  # None: the --ours-python interpreter
    dbname: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    measurements: tuple[str, ...] = tuple(MEASUREMENTS)
    #: Servers it needs besides PostgreSQL: "redis", "rabbitmq" (checked before it runs).
    needs: tuple[str, ...] = ()


# queue_depth is a safety cap (default 10,000 waiting messages, QueueFull beyond):
# raised so that an N=20,000 backlog can be built.
OURS_ENV = {"NEURON_TASKS_QUEUE_DEPTH": "1000000"}
SYSTEMS: list[SystemSpec] = [
    SystemSpec(
        "ours",
        "ours (neuron_tasks)",
        "sys_ours.py",
        None,
        "bench_ours",
        env=OURS_ENV,
        measurements=(*MEASUREMENTS, *OURS_ONLY),
    ),
    SystemSpec(
        "ours-balanced",
        "ours, balanced",
        "sys_ours.py",
        None,
        "bench_ours",
        env=OURS_ENV | {"NEURON_TASKS_DURABILITY": "balanced"},
        measurements=(*ENQUEUES, "e2e", "latency"),
    ),
    SystemSpec(
        "ours-volatile",
        "ours, volatile",
        "sys_ours.py",
        None,
        "bench_ours",
        env=OURS_ENV | {"NEURON_TASKS_DURABILITY": "volatile"},
        measurements=(*ENQUEUES, "e2e", "latency"),
    ),
    SystemSpec(
        "ours-nowait",
        "ours, ack_wait=false",
        "sys_ours.py",
        None,
        "bench_ours",
        env=OURS_ENV | {"NEURON_TASKS_ACK_WAIT": "false"},
        measurements=("drain_1x8", "drain_2x8", "e2e", "latency"),
    ),
    SystemSpec("redis", "Dramatiq Redis", "sys_redis.py", "dramatiq-redis", needs=("redis",)),
    SystemSpec(
        "rabbit",
        "Dramatiq RabbitMQ",
        "sys_rabbit.py",
        "dramatiq-rabbit",
        env={"BENCH_RABBIT_CONFIRM": "0"},
        needs=("rabbitmq",),
    ),
    SystemSpec(
        "rabbit-confirm",
        "Dramatiq RabbitMQ confirms",
        "sys_rabbit.py",
        "dramatiq-rabbit",
        env={"BENCH_RABBIT_CONFIRM": "1"},
        measurements=("enqueue_1", "enqueue_4", "e2e", "latency"),
        needs=("rabbitmq",),
    ),
    SystemSpec("celery", "Celery Redis t8", "sys_celery.py", "celery", needs=("redis",)),
    SystemSpec("dpg", "dramatiq-postgres", "sys_dpg.py", "dpg", "bench_dpg"),
    SystemSpec(
        "pgq",
        "pgqueuer c8",
        "sys_pgq.py",
        "pgq",
        "bench_pgq",
        env={"BENCH_PGQ_BATCH": "8", "BENCH_PGQ_LIMIT": "8", "BENCH_PGQ_MAX_TASKS": "0"},
    ),
    SystemSpec(
        "pgq-max",
        "pgqueuer max",
        "sys_pgq.py",
        "pgq",
        "bench_pgq",
        env={"BENCH_PGQ_BATCH": "10", "BENCH_PGQ_LIMIT": "0", "BENCH_PGQ_MAX_TASKS": "0"},
        measurements=("drain_1x8", "drain_2x8", "e2e", "latency"),
    ),
    SystemSpec("stub", "Dramatiq Stub (ceiling)", "sys_stub.py", "dramatiq-redis"),
    SystemSpec(
        "stub-ours",
        "Stub + our middleware",
        "sys_stub.py",
        None,
        env={"BENCH_STUB_MIDDLEWARE": "ours"},
        measurements=("drain_1x8", "e2e", "latency"),
    ),
]
BY_KEY = {s.key: s for s in SYSTEMS}

# (label, numerator system, denominator system, measurement, goal)
RATIOS: list[tuple[str, str, str, str, float]] = [
    ("send() x1: ours / Redis", "ours", "redis", "enqueue_1", 0.8),
    ("send() x4: ours / Redis", "ours", "redis", "enqueue_4", 1.0),
    ("send() x1: ours volatile / RabbitMQ", "ours-volatile", "rabbit", "enqueue_1", 1.0),
    ("enqueue bulk: ours / pgqueuer", "ours", "pgq", "enqueue_bulk", 1.0),
    ("drain 1x8: ours / pgqueuer's defaults", "ours", "pgq-max", "drain_1x8", 1.5),
    ("drain 2x8: ours / pgqueuer's defaults", "ours", "pgq-max", "drain_2x8", 1.5),
    ("drain 1x8: ours ack_wait=false / pgqueuer's defaults", "ours-nowait", "pgq-max", "drain_1x8", 1.5),
]
LATENCY_GOALS = ("p50_ms", "p99_ms")  # ours at or below Dramatiq's RabbitMQ broker in the same run
LATENCY_PEER = "rabbit"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_busy(sample_s: float = 1.0) -> float | None:
    """Share of all CPUs busy over ``sample_s`` (Linux /proc/stat), None elsewhere."""

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = read()
        time.sleep(sample_s)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else None


OUR_DATABASES = ("bench_ours", "bench_dpg", "bench_pgq")


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (session id, utime+stime ticks, command line) of every process (Linux)."""
    table: dict[int, tuple[int, int, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        ppid, session = int(fields[1]), int(fields[3])
        if ppid == 2 or not cmdline:  # kernel threads
            continue
        table[int(entry.name)] = (session, int(fields[11]) + int(fields[12]), cmdline)
    return table


class ForeignLoad:
    """CPU used during a measurement by processes that are not part of it.

    Ours: the measurement's session (its workers included), this runner, the
    PostgreSQL backends of the bench databases, PostgreSQL's shared background
    processes, redis-server and RabbitMQ's server. Anything else (a test suite, its own PostgreSQL
    backends) is foreign and skews the numbers on a small machine.
    """

    def __init__(self) -> None:
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.session = -1
        self.t0 = 0.0
        self.ok = os.path.isdir("/proc/self")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _foreign(self, pid: int, session: int, cmdline: str) -> bool:
        if session == self.session or pid == os.getpid():
            return False
        if cmdline.startswith("redis-server") or any(db in cmdline for db in OUR_DATABASES):
            return False
        if "beam.smp" in cmdline or "rabbitmq" in cmdline or "epmd" in cmdline:  # RabbitMQ's server
            return False
        # PostgreSQL background processes (no client address in their title) are shared.
        return not (cmdline.startswith("postgres:") and "(" not in cmdline and "[local]" not in cmdline)

    def _sample(self) -> None:
        for pid, (session, ticks, cmdline) in _proc_table().items():
            if self._foreign(pid, session, cmdline):
                self.first.setdefault(pid, 0)  # started after t0: all its CPU counts
                self.last[pid] = ticks

    def start(self, session: int) -> None:
        if not self.ok:
            return
        self.session, self.t0 = session, time.monotonic()
        for pid, (sess, ticks, cmdline) in _proc_table().items():
            if self._foreign(pid, sess, cmdline):
                self.first[pid] = ticks
                self.last[pid] = ticks

        def loop() -> None:
            while not self._stop.wait(0.25):
                self._sample()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> float | None:
        """Average number of CPUs the foreign processes kept busy."""
        if not self.ok or self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        self._sample()
        wall = time.monotonic() - self.t0
        ticks = sum(self.last[p] - self.first.get(p, 0) for p in self.last)
        return ticks / os.sysconf("SC_CLK_TCK") / wall if wall > 0 else None


def wait_quiet(max_wait_s: float, threshold: float) -> float | None:
    """Wait (up to ``max_wait_s``) until other processes leave the CPUs mostly idle.

    Returns the last busy share measured. Nothing of the benchmark runs meanwhile,
    so any load is someone else's (a test suite, a build) and would skew the numbers.
    """
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy()
    warned = False
    while busy is not None and busy > threshold and time.monotonic() < deadline:
        if not warned:
            log(f"  machine busy ({busy:.0%} CPU) before a measurement, waiting up to {max_wait_s:.0f}s")
            warned = True
        busy = cpu_busy()
    return busy


# --------------------------------------------------------------------------
# Virtualenvs
# --------------------------------------------------------------------------


def ensure_venv(name: str) -> Path:
    """Create/update ``.bench-venvs/<name>`` with its pinned spec; return its python."""
    VENVS.mkdir(exist_ok=True)
    ignore = VENVS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    path = VENVS / name
    python = path / "bin" / "python"
    marker = path / ".bench-spec"
    spec = VENV_SPECS[name]
    wanted = "\n".join(spec)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    if not python.exists():
        log(f"creating virtualenv {path}")
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    log(f"installing into {path}: {' '.join(spec)}")
    with open(path / "pip-install.log", "w") as out:
        subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", *spec],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    marker.write_text(wanted)
    return python


# --------------------------------------------------------------------------
# Running one measurement
# --------------------------------------------------------------------------


def with_dbname(url: str, dbname: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + dbname, p.query, p.fragment))


def run_script(
    python: str,
    spec: SystemSpec,
    args: argparse.Namespace,
    argv: list[str],
    timeout_s: float,
) -> dict[str, Any]:
    db_url = with_dbname(args.database_url, spec.dbname + args.db_suffix if spec.dbname else "postgres")
    cmd = [
        python,
        str(HERE / spec.script),
        *argv,
        "--db-url",
        db_url,
        "--redis-url",
        args.redis_url,
        "--timeout",
        str(args.timeout),
        "--bulk-chunk",
        str(args.bulk_chunk),
    ]
    for key, value in extra_options(args).items():
        cmd += ["--extra", f"{key}={value}"]
    env = os.environ | spec.env | {"BENCH_RABBITMQ_URL": args.rabbitmq_url}
    if spec.venv is None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # a timeout kills the workers too
    )
    foreign = ForeignLoad()
    foreign.start(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        foreign.stop()
        return {"status": "error", "error": f"killed after {timeout_s:.0f}s", "stderr": err[-2000:]}
    foreign_cpus = foreign.stop()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        tail = err.strip().splitlines()[-1:] or [f"rc={proc.returncode}"]
        return {"status": "error", "error": tail[0][:300], "stderr": err[-2000:]}
    result: dict[str, Any] = json.loads(lines[-1])
    if result.get("status") == "error":
        result["stderr"] = err[-2000:]
    if foreign_cpus is not None:
        result["foreign_cpus"] = round(foreign_cpus, 3)
    return result


def extra_options(args: argparse.Namespace) -> dict[str, str]:
    """Options of the measurements of our broker alone (``ours_extra.py``)."""
    return {
        "backlog_size": str(args.backlog_size),
        "backlog_small": str(args.backlog_small),
        "backlog_calls": str(args.backlog_calls),
        "backlog_reads": str(args.backlog_reads),
        "explain": "1" if args.explain else "0",
        "topic_messages": str(args.topic_messages),
    }


def server_missing(service: str, args: argparse.Namespace) -> str | None:
    """None when the server a peer needs accepts connections, else why not."""
    name, url, default_port = {
        "redis": ("Redis", args.redis_url, 6379),
        "rabbitmq": ("RabbitMQ", args.rabbitmq_url, 5672),
    }[service]
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as e:
        return f"{name} not reachable at {host}:{port} ({e.strerror or e})"


def git_revision() -> str:
    """HEAD of the repository, with '+dirty' when our broker's code has local changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "neuron_tasks", "schema"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (head or "?") + ("+dirty" if dirty else "")


def check_ours(python: str) -> str | None:
    """None if ``neuron_tasks.core.broker.PostgresBroker`` imports, else the reason."""
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    try:
        r = subprocess.run(
            [python, "-c", "from neuron_tasks.core.broker import PostgresBroker"],
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if r.returncode == 0:
        return None
    lines = r.stderr.strip().splitlines()
    return lines[-1] if lines else f"rc={r.returncode}"


# --------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell from its rounds: medians (and min, max) of the numbers of the successful ones."""
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        failed: dict[str, Any] = dict(runs[-1]) if runs else {"status": "error", "error": "not run"}
        failed["runs"] = runs
        return failed
    out: dict[str, Any] = dict(ok[0])
    out |= {"status": "ok", "runs": runs, "rounds_ok": len(ok)}
    for key, value in ok[0].items():
        if len(ok) == 1 or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        values = [float(r[key]) for r in ok if isinstance(r.get(key), int | float)]
        out[key] = statistics.median(values)
        if len(values) > 1:
            out[f"{key}_min"], out[f"{key}_max"] = min(values), max(values)
    warnings = sorted({str(r["warning"]) for r in ok if r.get("warning")})
    if warnings:
        out["warning"] = "; ".join(warnings)
    errors = [str(r.get("error")) for r in runs if r.get("status") == "error"]
    if errors:
        out["warning"] = "; ".join([*warnings, f"{len(errors)} round(s) failed: {errors[0]}"])
    out["disturbed"] = any(r.get("disturbed") for r in ok)
    return out


def _range(res: dict[str, Any], key: str, fmt: str) -> str:
    if f"{key}_min" not in res:
        return ""
    return f" ({format(res[f'{key}_min'], fmt)}-{format(res[f'{key}_max'], fmt)})"


def fmt_cell(res: dict[str, Any] | None, notes: list[str]) -> str:
    if res is None:
        return "-"
    status = res.get("status")
    if status in ("pending", "skipped"):
        return str(status)
    if status == "n/a":
        return "n/a"
    if status != "ok":
        notes.append(str(res.get("error", "?")))
        return f"error [{len(notes)}]"
    if "p50_ms" in res:
        text = f"{res['p50_ms']:.1f} / {res['p99_ms']:.1f} ms" + _range(res, "p50_ms", ".1f")
    else:
        text = f"{res['rate']:,.0f}/s" + _range(res, "rate", ",.0f")
    if res.get("warning"):
        notes.append(str(res["warning"]))
        text += f" [{len(notes)}]"
    if res.get("disturbed"):
        text += " *"
    return text


DISTURBED_LEGEND = (
    "* other processes (not this benchmark, not its PostgreSQL/Redis/RabbitMQ) kept more than {t:.2f} CPUs busy "
    "during that measurement in at least one round; see foreign_cpus in the JSON"
)


def rate_of(results: dict[str, dict[str, Any]], key: str, m: str) -> float | None:
    res = results.get(key, {}).get(m)
    if not res or res.get("status") != "ok" or "rate" not in res:
        return None
    return float(res["rate"])


def ratio_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows: list[list[str]] = []
    for label, num, den, m, goal in RATIOS:
        a, b = rate_of(results, num, m), rate_of(results, den, m)
        if a is None or b is None:
            rows.append([label, "-", f">= {goal:.1f}", "not measured"])
            continue
        r = a / b
        star = " *" if any(results[k][m].get("disturbed") for k in (num, den)) else ""
        rows.append([label, f"{r:.2f}", f">= {goal:.1f}", ("met" if r >= goal else "NOT met") + star])
    lat = results.get("ours", {}).get("latency")
    peer = results.get(LATENCY_PEER, {}).get("latency")
    for k in LATENCY_GOALS:
        label = f"ours idle pickup {k[:3]} vs RabbitMQ"
        if not lat or lat.get("status") != "ok" or not peer or peer.get("status") != "ok":
            rows.append([label, "-", "<= RabbitMQ", "not measured"])
            continue
        v, goal = float(lat[k]), float(peer[k])
        star = " *" if lat.get("disturbed") or peer.get("disturbed") else ""
        rows.append([label, f"{v:.2f} ms", f"<= {goal:.2f} ms", ("met" if v <= goal else "NOT met") + star])
    return rows


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def _p50(results: dict[str, dict[str, Any]], key: str) -> float | None:
    res = results.get(key, {}).get("latency")
    return float(res["p50_ms"]) if res and res.get("status") == "ok" else None


def peer_ratio_table(keys: list[str], results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """ours / each peer, per measurement (rates: above 1 = ours faster; latency p50: below 1 = ours faster)."""
    peers = [k for k in keys if not k.startswith("ours")]
    header = ["measurement"] + [f"ours / {BY_KEY[p].label}" for p in peers]
    rows = []
    for m, label in MEASUREMENTS.items():
        if m == "latency":
            rows.append([label + " (p50; < 1 = ours faster)"] + [_ratio(_p50(results, "ours"), _p50(results, p))
                                                                 for p in peers])
        else:
            rows.append([label] + [_ratio(rate_of(results, "ours", m), rate_of(results, p, m)) for p in peers])
    return header, rows


def durability_table(keys: list[str], results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    levels = [k for k in ("ours-balanced", "ours-volatile") if k in keys]
    header = ["measurement", "ours (durable)"] + [f"{BY_KEY[k].label}" for k in levels]
    header += [f"{k.split('-', 1)[1]} / durable" for k in levels]
    rows = []
    notes: list[str] = []
    for m in (*ENQUEUES, "e2e"):
        row = [MEASUREMENTS[m], fmt_cell(results.get("ours", {}).get(m), notes)]
        row += [fmt_cell(results.get(k, {}).get(m), notes) for k in levels]
        row += [_ratio(rate_of(results, k, m), rate_of(results, "ours", m)) for k in levels]
        rows.append(row)
    return header, rows


def ceiling_table(keys: list[str], results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Each system's drain 1x8 as a fraction of the StubBroker's (Dramatiq's and our middleware)."""
    ceilings = [k for k in ("stub", "stub-ours") if k in keys]
    header = ["system", "drain 1x8"] + [f"share of {BY_KEY[c].label}" for c in ceilings]
    rows = []
    for k in keys:
        if k in ceilings or (rate := rate_of(results, k, "drain_1x8")) is None:
            continue
        rows.append([BY_KEY[k].label, f"{rate:,.0f}/s"] + [_ratio(rate, rate_of(results, c, "drain_1x8"))
                                                          for c in ceilings])
    return header, rows


def topics_table(res: dict[str, Any] | None) -> tuple[list[str], list[list[str]]] | None:
    if not res or res.get("status") != "ok":
        return None
    header = ["job", "unlimited queue", f"topic, concurrency {int(res.get('topic_concurrency', 8))}",
              "topic / unlimited"]
    rows = []
    for job, label in (("noop", "no-op"), ("sleep10", "10 ms sleep")):
        rows.append([
            label,
            f"{res[f'{job}_unlimited']:,.0f}/s" + _range(res, f"{job}_unlimited", ",.0f"),
            f"{res[f'{job}_topic']:,.0f}/s" + _range(res, f"{job}_topic", ",.0f"),
            f"{res[f'{job}_topic'] / res[f'{job}_unlimited']:.2f}",
        ])
    return header, rows


def _ms(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "-"
    if "error" in cell:
        return "error: " + str(cell["error"])[:80]
    return f"{cell['median_ms']:.2f} / {cell['worst_ms']:.1f}"


def backlog_table(res: dict[str, Any] | None) -> tuple[list[str], list[list[str]]] | None:
    if not res or res.get("status") != "ok":
        return None
    small, large = str(res["small"]), str(res["large"])
    lv = res["levels"]
    header = ["ms: median / worst", f"{int(small):,} pending", f"{int(large):,} pending", "ratio (medians)"]
    rows = []
    for name in res["probes"]:
        a, b = lv[small].get(name), lv[large].get(name)
        ok = a and b and "median_ms" in a and "median_ms" in b
        calls = (a or {}).get("calls")
        rows.append([f"{name} x{calls}" if calls else name, _ms(a), _ms(b),
                     f"{b['median_ms'] / a['median_ms']:.1f}" if ok and a["median_ms"] else "-"])
    rows.append(["(fill time, s)", str(lv[small]["fill_seconds"]), str(lv[large]["fill_seconds"]), ""])
    return header, rows


def build_tables(keys: list[str], results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]], list[str]]:
    notes: list[str] = []
    header = ["measurement"] + [BY_KEY[k].label for k in keys]
    rows = []
    for m, label in MEASUREMENTS.items():
        rows.append([label] + [fmt_cell(results.get(k, {}).get(m), notes) for k in keys])
    return header, rows, notes


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plain_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), sep] + [fmt.format(*r) for r in rows])


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(f"\n{title}\n{plain_table(header, rows)}")
        return
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=250).print(table)


def _measured(rows: list[list[str]]) -> list[list[str]]:
    """The rows with at least one value (a measurement left out shows no row)."""
    return [r for r in rows if any(c != "-" for c in r[1:])]


def all_tables(report: dict[str, Any], keys: list[str]) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """(title, header, rows, notes below it) of every table of the report, in print order."""
    out = []
    for title, header, rows, notes in _all_tables(report, keys):
        if title.startswith("Goals"):
            if any(r[1] != "-" for r in rows):
                out.append((title, header, rows, notes))
        elif measured := _measured(rows):
            out.append((title, header, measured, notes))
    return out


def _all_tables(report: dict[str, Any], keys: list[str]) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    results = report["results"]
    rounds = report["rounds"]
    cell = "median (min-max) over rounds" if rounds > 1 else "one round"
    header, rows, notes = build_tables(keys, results)
    if any(r.get("disturbed") for d in results.values() for r in d.values()):
        notes.append(DISTURBED_LEGEND.format(t=report["foreign_threshold"]))
    lines = [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    for k in keys:
        why = str(report["info"].get(k, {}).get("error") or "")
        if why.startswith(("skipped", "pending")):
            lines.append(f"{BY_KEY[k].label}: {why}")
    out = [(f"Throughput, N={report['messages']} messages, no-op actor; {cell}", header, rows, lines)]
    peers = [k for k in keys if not k.startswith("ours")]
    if "ours" in keys and peers:
        out.append(("Ratios: ours / each peer (medians)", *peer_ratio_table(keys, results), []))
    if "ours" in keys and any(k in keys for k in ("ours-balanced", "ours-volatile")):
        out.append(("Durability levels of ours (medians)", *durability_table(keys, results), []))
    ceiling = ceiling_table(keys, results)
    if ceiling[1]:
        out.append(("Drain 1x8 as a share of the StubBroker ceiling (medians)", *ceiling, []))
    if "ours" in keys:
        out.append(("Goals", ["ratio", "value", "goal", "verdict"], ratio_rows(results), []))
    topics = topics_table(results.get("ours", {}).get("topics"))
    if topics:
        t = results["ours"]["topics"]
        tnotes = [str(t["warning"])] if t.get("warning") else []
        tnotes += [str(w) for w in t.get("warnings") or []]
        out.append((f"Topics: drain of {int(t['n'])} messages, 1 worker process x 8 threads; {cell}", *topics, tnotes))
    backlog = backlog_table(results.get("ours", {}).get("backlog"))
    if backlog:
        b = results["ours"]["backlog"]
        note = [f"queue_depth = {b['queue_depth']:,}; depth check timed: {b.get('depth_check', '?')}"]
        if b.get("disturbed"):
            note.append(f"* other processes kept {b['foreign_cpus']:.2f} CPUs busy meanwhile: run it again")
        out.append(("Backlog: what a deep queue costs (ours)", *backlog, note))
    return out


def per_round_lines(report: dict[str, Any], keys: list[str]) -> list[str]:
    lines = []
    for k in keys:
        for m, res in report["results"].get(k, {}).items():
            runs = res.get("runs") or []
            if m == "backlog" or not runs:
                continue
            vals = []
            for r in runs:
                if r.get("status") != "ok":
                    vals.append(str(r.get("status")))
                elif "p50_ms" in r:
                    vals.append(f"{r['p50_ms']:.2f}/{r['p99_ms']:.2f} ms")
                elif "rate" in r:
                    vals.append(f"{r['rate']:,.0f}")
                else:
                    vals.append(", ".join(f"{f}={v:,.0f}" for f, v in r.items()
                                          if f.endswith(("_topic", "_unlimited"))))
            lines.append(f"- {BY_KEY[k].label}, {ALL_MEASUREMENTS[m]}: " + "; ".join(vals))
    return lines


def explain_lines(report: dict[str, Any]) -> list[str]:
    b = report["results"].get("ours", {}).get("backlog") or {}
    out = []
    for name, plans in (b.get("explain") or {}).items():
        out.append(f"--- {name} at {int(b['large']):,} pending: EXPLAIN (ANALYZE, BUFFERS) of each statement it ran")
        out += plans or ["(no statement captured)"]
    return out


def render_markdown(report: dict[str, Any], keys: list[str]) -> str:
    m = report["machine"]
    out = [
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}  ",
        f"Messages per measurement: {report['messages']}"
        + (f" (except {report['messages_for']})" if report["messages_for"] else "")
        + f"; rounds: {report['rounds']}, systems alternated within each round  ",
        f"Code measured (ours): git {report['git']}  ",
        f"Total wall time: {report['wall_seconds']:.0f} s",
        "",
    ]
    for title, header, rows, notes in all_tables(report, keys):
        out += [f"**{title}**", "", markdown_table(header, rows), ""]
        out += [f"{n}  " for n in notes]
        if notes:
            out.append("")
    out += ["Per-round values (in the order run):", "", *per_round_lines(report, keys), ""]
    if explain := explain_lines(report):
        out += ["Plans at the largest backlog:", "", "```", *explain, "```", ""]
    out += ["Versions and settings:", ""]
    for k in keys:
        info = report["info"].get(k, {})
        out.append(f"- **{BY_KEY[k].label}**")
        for name, value in (info.get("versions") or {}).items():
            out.append(f"  - {name}: {value}")
        for name, value in (info.get("settings") or {}).items():
            out.append(f"  - {name}: {value}")
        if info.get("error"):
            out.append(f"  - {info['error']}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def measure_once(python: str, spec: SystemSpec, args: argparse.Namespace, m: str, n: int) -> dict[str, Any]:
    """One measurement subprocess, after waiting for a quiet machine; flags foreign load."""
    busy = wait_quiet(args.quiet_wait, args.quiet_threshold)
    # backlog: two fills, ~2 x 200 timed calls per level, reads; minutes at 1M on a small machine
    limit = max(args.timeout + 120, 3600) if m == "backlog" else args.timeout + 120
    res = run_script(python, spec, args, ["measure", m, "--messages", str(n)], limit)
    if busy is not None:
        res["cpu_busy_before"] = round(busy, 3)
    fcpu = res.get("foreign_cpus")
    res["disturbed"] = bool(res.get("status") == "ok" and fcpu is not None and fcpu > args.foreign_threshold)
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=20000, help="N messages per measurement")
    p.add_argument("--rounds", type=int, default=3,
                   help="run every (system, measurement) this many times, systems alternated; medians reported")
    p.add_argument(
        "--only",
        default=",".join(s.key for s in SYSTEMS),
        help=f"comma list of systems among {', '.join(BY_KEY)}",
    )
    p.add_argument("--skip", default="", help="comma list of systems to leave out (of --only)")
    p.add_argument("--measurements", default=",".join(ALL_MEASUREMENTS),
                   help=f"comma list among {', '.join(ALL_MEASUREMENTS)}")
    p.add_argument(
        "--messages-for",
        action="append",
        default=[],
        metavar="SYSTEM=N",
        help="override N for one system (e.g. dpg=5000); repeatable",
    )
    p.add_argument("--backlog-size", type=int, default=1_000_000, help="backlog: the deep level (pending messages)")
    p.add_argument("--backlog-small", type=int, default=10_000, help="backlog: the shallow level")
    p.add_argument("--backlog-calls", type=int, default=200, help="backlog: timed send() / SQL enqueue calls per level")
    p.add_argument("--backlog-reads", type=int, default=20,
                   help="backlog: timed depth checks / status / overview calls per level")
    p.add_argument("--explain", action="store_true",
                   help="backlog: print the plans (EXPLAIN ANALYZE, BUFFERS) of the timed statements at the deep level")
    p.add_argument("--topic-messages", type=int, default=2000, help="topics: messages per drain")
    p.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server; each system uses its own database on it (bench_ours, ...)",
    )
    p.add_argument("--db-suffix", default="",
                   help="appended to the bench databases' names (bench_ours...), for runs side by side")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/15", help="Redis db (FLUSHDB'd!)")
    p.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672/%2F",
                   help="RabbitMQ (its queues bench, bench.DQ, bench.XQ are deleted before each measurement)")
    p.add_argument("--ours-python", default=sys.executable, help="interpreter with our broker's deps")
    p.add_argument("--bulk-chunk", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=120.0, help="max seconds to wait for a drain")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each measurement, wait up to this many seconds for the CPUs to be idle",
    )
    p.add_argument("--quiet-threshold", type=float, default=0.2, help="'idle' means busy share below this")
    p.add_argument(
        "--foreign-threshold",
        type=float,
        default=0.15,
        help="flag a measurement when other processes used more CPUs than this meanwhile",
    )
    p.add_argument(
        "--retries-when-busy",
        type=int,
        default=1,
        help="measure a disturbed measurement again up to this many times, keeping the least disturbed",
    )
    p.add_argument("--json", default=None, help="write all results (every round's values) to this JSON file")
    p.add_argument("--markdown", default=None, help="write the tables (and every round's values) as Markdown")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="measure nothing: print the tables (and --markdown) of a run saved with --json")
    return p.parse_args(argv)


def prepare(key: str, args: argparse.Namespace, report: dict[str, Any]) -> str | None:
    """The interpreter of a system, after its info; None (with one line logged) when it cannot run."""
    spec = BY_KEY[key]
    for service in spec.needs:
        if (why := server_missing(service, args)) is not None:
            log(f"[{key}] skipped: {why}")
            report["info"][key] = {"error": f"skipped: {why}"}
            return None
    try:
        python = args.ours_python if spec.venv is None else str(ensure_venv(spec.venv))
    except (subprocess.CalledProcessError, OSError) as e:
        why = f"virtualenv {spec.venv} could not be set up ({e}); see .bench-venvs/{spec.venv}/pip-install.log"
        log(f"[{key}] skipped: {why}")
        report["info"][key] = {"error": f"skipped: {why}"}
        return None
    if spec.venv is None and (reason := check_ours(python)) is not None:
        log(f"[{key}] not importable: {reason}")
        report["info"][key] = {"error": f"pending: {reason}"}
        return None
    info = run_script(python, spec, args, ["info"], 120)
    report["info"][key] = info if "versions" in info else {"error": info.get("error")}
    return python


def summary_of(res: dict[str, Any]) -> str:
    if res.get("status") == "ok":
        if "p50_ms" in res:
            return f"p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms"
        if "rate" in res:
            return f"{res['rate']:,.0f} msg/s"
        if "levels" in res:
            return "done"
        return ", ".join(f"{k} {v:,.0f}/s" for k, v in res.items() if k.endswith(("_topic", "_unlimited")))
    if res.get("status") == "error":
        return f"ERROR {res.get('error')}"
    return f"{res.get('status')} {res.get('reason', '')}".strip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        saved: dict[str, Any] = json.loads(Path(args.from_json).read_text())
        show(saved, [k for k in saved["results"] if k in BY_KEY], args)
        return 0
    skip = {k.strip() for k in args.skip.split(",") if k.strip()}
    keys = [k.strip() for k in args.only.split(",") if k.strip() and k.strip() not in skip]
    unknown = [k for k in [*keys, *skip] if k not in BY_KEY]
    if unknown:
        log(f"unknown systems: {unknown}; choose among {list(BY_KEY)}")
        return 2
    wanted = [m.strip() for m in args.measurements.split(",") if m.strip()]
    if bad := [m for m in wanted if m not in ALL_MEASUREMENTS]:
        log(f"unknown measurements: {bad}; choose among {list(ALL_MEASUREMENTS)}")
        return 2
    per_system_n = dict(item.split("=", 1) for item in args.messages_for)
    rounds = max(1, args.rounds)
    t_start = time.monotonic()
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python bench/throughput/run.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "messages": args.messages,
        "messages_for": per_system_n,
        "rounds": rounds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "git": git_revision(),
        "foreign_threshold": args.foreign_threshold,
        "info": {},
        "order": [],
        "results": {},
    }
    results: dict[str, dict[str, Any]] = report["results"]
    pythons: dict[str, str] = {}
    for key in keys:
        results[key] = {}
        python = prepare(key, args, report)
        status = "pending" if str(report["info"][key].get("error", "")).startswith("pending") else "skipped"
        for m in BY_KEY[key].measurements:
            if m in wanted and python is None:
                results[key][m] = {"status": status, "error": report["info"][key].get("error")}
        if python is not None:
            pythons[key] = python
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    runnable = [k for k in keys if k in pythons]
    for r in range(rounds):
        shift = r % len(runnable) if runnable else 0
        order = runnable[shift:] + runnable[:shift]  # round-robin, rotated each round
        log(f"round {r + 1}/{rounds}: {', '.join(order)}")
        for m in ALL_MEASUREMENTS:
            if m not in wanted or (m == "backlog" and r > 0):  # the backlog runs once: minutes per run
                continue
            for key in order:
                spec = BY_KEY[key]
                if m not in spec.measurements:
                    continue
                n = int(per_system_n.get(key, args.messages))
                t0 = time.monotonic()
                res = measure_once(pythons[key], spec, args, m, n)
                for _ in range(args.retries_when_busy):
                    if not res.get("disturbed"):
                        break
                    log(f"[{key}] {m}: disturbed ({res['foreign_cpus']:.2f} foreign CPUs), measuring again")
                    again = measure_once(pythons[key], spec, args, m, n)
                    if again.get("status") == "ok" and again.get("foreign_cpus", 1e9) < res["foreign_cpus"]:
                        res = again
                res["round"] = r + 1
                runs.setdefault((key, m), []).append(res)
                report["order"].append(f"{r + 1}:{key}:{m}")
                log(f"[{key}] {m:<13} {summary_of(res)}  ({time.monotonic() - t0:.1f}s)")
    for (key, m), values in runs.items():
        results[key][m] = aggregate(values)
    report["wall_seconds"] = time.monotonic() - t_start
    if args.json:  # first: a long run's numbers survive whatever follows
        Path(args.json).write_text(json.dumps(report, indent=2))
    show(report, keys, args)
    return 0


def show(report: dict[str, Any], keys: list[str], args: argparse.Namespace) -> None:
    """Print every table; write the Markdown."""
    for title, header, rows, notes in all_tables(report, keys):
        print_table(title, header, rows)
        for note in notes:
            print(f"  {note}")
    if args.explain and (explain := explain_lines(report)):
        print("\n" + "\n".join(explain))
    print(f"total wall time: {report['wall_seconds']:.0f} s")
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(report, keys))


if __name__ == "__main__":
    raise SystemExit(main())
