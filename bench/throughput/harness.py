"""Measurement harness shared by every system under test.

This module is imported by the per-system scripts (``sys_*.py``), each running
in its own interpreter/virtualenv, so it only uses the standard library.

A system script is invoked in three ways::

    sys_x.py info                          # JSON: versions + settings
    sys_x.py measure <measurement> ...     # JSON: one measurement result
    sys_x.py worker --threads 8 ...        # a worker process (spawned by ``measure``)

``--extra KEY=VALUE`` (repeatable) carries the options of system-specific
measurements (``System.custom_measurements``: ours' ``backlog`` and ``topics``);
``--done-file`` tells the workers of a system without an outside view of "all
done" (RabbitMQ, Celery) where to count their completions (``DoneCounter``).

Worker protocol (identical for every system): the worker process imports
everything, builds its broker/connection and then prints ``READY`` on stdout.
It starts consuming only when it reads ``GO`` on stdin, so interpreter start-up
and imports are never part of a timed window. It stops gracefully when it reads
``STOP`` (or when stdin reaches EOF, so an orphaned worker never outlives its
parent) and exits.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUEUE = "bench"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432"
POLL_INTERVAL_S = 0.020
LATENCY_MESSAGES = 200
LATENCY_SPACING_S = 0.020
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0

MEASUREMENTS = (
    "enqueue_1",
    "enqueue_4",
    "enqueue_bulk",
    "drain_1x8",
    "drain_2x8",
    "e2e",
    "latency",
)
#: Measurements only some systems have (``System.custom_measurements``).
CUSTOM_MEASUREMENTS = ("backlog", "topics")


def dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


class BenchError(RuntimeError):
    """A measurement failed; the message ends up in the result table."""


class NotApplicable(Exception):
    """The system has no equivalent of this measurement."""


@dataclass
class Options:
    messages: int
    db_url: str
    redis_url: str
    bulk_chunk: int
    timeout_s: float
    extra: dict[str, str] = field(default_factory=dict)

    def extra_int(self, key: str, default: int) -> int:
        return int(self.extra.get(key, default))


# --------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------


class WorkerGroup(ABC):
    """A set of workers: built and ready after construction, consuming after go()."""

    @abstractmethod
    def go(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    def check_alive(self) -> None:  # noqa: B027 - optional hook
        """Raise BenchError if a worker died."""


def _readline_within(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """One line of the process' stdout, or "" after ``timeout_s``."""
    box: list[str] = []
    stdout = proc.stdout
    assert stdout is not None
    t = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
    t.start()
    t.join(max(0.0, timeout_s))
    return box[0] if box else ""


class SubprocessWorkers(WorkerGroup):
    """``procs`` worker subprocesses speaking the READY/GO/STOP protocol."""

    def __init__(self, cmds: Sequence[Sequence[str]]) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.stderr_files: list[Any] = []
        for cmd in cmds:
            err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
            self.stderr_files.append(err)
            self.procs.append(
                subprocess.Popen(
                    list(cmd),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    bufsize=1,
                )
            )
        self._wait_ready()

    def _stderr_tail(self, i: int) -> str:
        f = self.stderr_files[i]
        f.seek(0)
        data: str = f.read()
        return data[-2000:]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for i, p in enumerate(self.procs):
            line = _readline_within(p, deadline - time.monotonic()).strip()
            if line != "READY":
                self.kill()
                raise BenchError(f"worker {i} not ready (got {line!r}, rc={p.poll()}): {self._stderr_tail(i)}")

    def go(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()

    def check_alive(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                raise BenchError(f"worker {i} died rc={p.returncode}: {self._stderr_tail(i)}")

    def stop(self) -> None:
        for p in self.procs:
            try:
                assert p.stdin is not None
                p.stdin.write("STOP\n")
                p.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for f in self.stderr_files:
            f.close()

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)


def worker_protocol(start: Callable[[], None], stop: Callable[[], None]) -> None:
    """Run in a worker process once the broker is built: READY, GO, STOP."""
    print("READY", flush=True)
    line = sys.stdin.readline()
    if line.strip() != "GO":
        return
    start()
    while True:
        line = sys.stdin.readline()
        if not line or line.strip() == "STOP":
            break
    stop()


class LatencyRecorder:
    """Appends one pickup latency (seconds) per line with O_APPEND writes."""

    def __init__(self, path: str | None) -> None:
        self.fd: int | None = None
        if path:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(self, sent_at: float | None) -> None:
        if sent_at is not None and self.fd is not None:
            os.write(self.fd, f"{time.time() - sent_at:.6f}\n".encode())

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class DoneCounter:
    """Completions as bytes of a file, one ``os.write`` (O_APPEND) per finished job.

    The side channel of brokers that cannot tell "queued or in flight" from outside
    (RabbitMQ, Celery: an acked-early or unacked message is invisible to a queue count).
    """

    def __init__(self, path: str | None) -> None:
        self.fd: int | None = None
        if path:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def done(self) -> None:
        if self.fd is not None:
            os.write(self.fd, b"x")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @staticmethod
    def count(path: str) -> int:
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return 0


def run_threads(n: int, producers: int, fn: Callable[[range], None]) -> None:
    """Split ``range(n)`` over ``producers`` threads running ``fn``; re-raise failures."""
    size = n // producers
    ranges = [range(k * size, n if k == producers - 1 else (k + 1) * size) for k in range(producers)]
    if producers == 1:
        fn(ranges[0])
        return
    errors: list[BaseException] = []

    def target(r: range) -> None:
        try:
            fn(r)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=target, args=(r,)) for r in ranges]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------
# Systems
# --------------------------------------------------------------------------


class System(ABC):
    """Adapter for one system under test (lives in its own ``sys_*.py``)."""

    name = "?"
    max_procs = 2
    #: Measurements of this system beyond the common ones: name -> method(system) -> result.
    custom_measurements: dict[str, Callable[[System], dict[str, Any]]] = {}

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        #: Where workers count their completions (systems whose side channel is a DoneCounter).
        self.done_file: str | None = None

    # -- lifecycle --------------------------------------------------------
    @abstractmethod
    def setup(self) -> None:
        """Fresh, empty state (drop + create database / flush)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- description ------------------------------------------------------
    @abstractmethod
    def versions(self) -> dict[str, str]: ...

    @abstractmethod
    def settings(self) -> dict[str, str]: ...

    # -- producing --------------------------------------------------------
    @abstractmethod
    def enqueue(self, n: int, producers: int) -> None:
        """Send ``n`` messages one by one, split over ``producers`` producers."""

    def enqueue_bulk(self, n: int, chunk: int) -> None:
        """Send ``n`` messages in batches of ``chunk`` (one call per batch)."""
        raise NotApplicable("no bulk enqueue API")

    def fill(self, n: int) -> None:
        """Untimed backlog of ``n`` messages, as fast as the system allows."""
        try:
            self.enqueue_bulk(n, self.opts.bulk_chunk)
        except NotApplicable:
            self.enqueue(n, 4)

    @abstractmethod
    def send_timestamped(self, i: int) -> None:
        """Send one message carrying ``time.time()`` taken just before sending."""

    # -- side channel -----------------------------------------------------
    @abstractmethod
    def pending(self) -> bool:
        """True while any message is queued or being processed."""

    def problems(self) -> str | None:
        """A description of failed/dead-lettered messages, if any."""
        return None

    def probe_stats(self) -> dict[str, float] | None:
        """Cost of the side-channel query (PostgreSQL systems)."""
        probe = getattr(self, "probe", None)
        stats = getattr(probe, "stats", None)
        return stats() if callable(stats) else None

    # -- consuming --------------------------------------------------------
    def worker_cmd(self, threads: int, procs: int, latency_file: str | None) -> list[str]:
        script = sys.modules["__main__"].__file__
        assert script is not None
        cmd = [
            sys.executable,
            script,
            "worker",
            "--threads",
            str(threads),
            "--procs",
            str(procs),
            "--db-url",
            self.opts.db_url,
            "--redis-url",
            self.opts.redis_url,
        ]
        if latency_file:
            cmd += ["--latency-file", latency_file]
        if self.done_file:
            cmd += ["--done-file", self.done_file]
        return cmd

    def launch_workers(self, procs: int, threads: int, latency_file: str | None = None) -> WorkerGroup:
        """Start ``procs`` worker processes and wait until all are READY (not consuming yet)."""
        return SubprocessWorkers([self.worker_cmd(threads, procs, latency_file) for _ in range(procs)])


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------


def _wait_drained(system: System, group: WorkerGroup, timeout_s: float, n: int) -> float:
    """Poll the side channel every 20 ms until empty; returns the end time."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not system.pending():
            return time.perf_counter()
        group.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timeout after {timeout_s:.0f}s, {n} messages not all processed")
        time.sleep(POLL_INTERVAL_S)


wait_drained = _wait_drained


def _rate(n: int, seconds: float) -> dict[str, Any]:
    return {"rate": n / seconds if seconds > 0 else None, "seconds": round(seconds, 4), "n": n}


def measure(system: System, what: str) -> dict[str, Any]:
    n = system.opts.messages
    timeout = system.opts.timeout_s
    if what in system.custom_measurements:
        return system.custom_measurements[what](system)
    if what in CUSTOM_MEASUREMENTS:
        raise NotApplicable(f"{what}: not measured for this system")
    system.setup()
    if what in ("enqueue_1", "enqueue_4"):
        producers = 1 if what == "enqueue_1" else 4
        t0 = time.perf_counter()
        system.enqueue(n, producers)
        return _rate(n, time.perf_counter() - t0)
    if what == "enqueue_bulk":
        t0 = time.perf_counter()
        system.enqueue_bulk(n, system.opts.bulk_chunk)
        return _rate(n, time.perf_counter() - t0) | {"chunk": system.opts.bulk_chunk}
    if what in ("drain_1x8", "drain_2x8"):
        procs = 1 if what == "drain_1x8" else 2
        if procs > system.max_procs:
            raise NotApplicable("single process only")
        system.fill(n)
        if not system.pending():
            raise BenchError("backlog fill produced no pending messages")
        # Workers are started (interpreter up, broker built, READY) before the
        # clock starts; GO is sent at t0.
        group = system.launch_workers(procs, 8)
        t0 = time.perf_counter()
        group.go()
        try:
            t1 = _wait_drained(system, group, timeout, n)
        finally:
            group.stop()
        out = _rate(n, t1 - t0) | {"probe": system.probe_stats()}
        if (p := system.problems()) is not None:
            out["warning"] = p
        return out
    if what == "e2e":
        group = system.launch_workers(1, 8)
        group.go()
        try:
            t0 = time.perf_counter()
            system.enqueue(n, 1)
            t_sent = time.perf_counter()
            t1 = _wait_drained(system, group, timeout, n)
        finally:
            group.stop()
        out = _rate(n, t1 - t0) | {"send_seconds": round(t_sent - t0, 4), "probe": system.probe_stats()}
        if (p := system.problems()) is not None:
            out["warning"] = p
        return out
    if what == "latency":
        fd, path = tempfile.mkstemp(prefix=f"bench-lat-{system.name}-", suffix=".txt")
        os.close(fd)
        try:
            group = system.launch_workers(1, 8, latency_file=path)
            group.go()
            try:
                time.sleep(1.0)  # let the worker settle into its idle state
                next_at = time.perf_counter()
                for i in range(LATENCY_MESSAGES):
                    system.send_timestamped(i)
                    next_at += LATENCY_SPACING_S
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                _wait_drained(system, group, min(timeout, 30.0), LATENCY_MESSAGES)
            finally:
                group.stop()
            values = sorted(float(x) * 1000.0 for x in Path(path).read_text().split())
        finally:
            os.unlink(path)
        if len(values) < LATENCY_MESSAGES:
            raise BenchError(f"only {len(values)}/{LATENCY_MESSAGES} latencies recorded")
        return {
            "p50_ms": round(statistics.median(values), 3),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 3),
            "max_ms": round(values[-1], 3),
            "n": len(values),
        }
    raise BenchError(f"unknown measurement {what!r}")


# --------------------------------------------------------------------------
# CLI shared by the sys_*.py scripts
# --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["info", "measure", "worker"])
    p.add_argument("measurement", nargs="?", default="")
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--db-url", default="")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    p.add_argument("--bulk-chunk", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--latency-file", default=None)
    p.add_argument("--json-out", default=None)
    p.add_argument("--done-file", default=None)
    p.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE")
    return p


WorkerMain = Callable[[argparse.Namespace], None]


def main(system_cls: type[System], worker_main: WorkerMain) -> None:
    args = _parser().parse_args()
    if args.command == "worker":
        worker_main(args)
        return
    opts = Options(
        messages=args.messages,
        db_url=args.db_url,
        redis_url=args.redis_url,
        bulk_chunk=args.bulk_chunk,
        timeout_s=args.timeout,
        extra=dict(item.split("=", 1) for item in args.extra),
    )
    result: dict[str, Any]
    system = system_cls(opts)
    try:
        if args.command == "info":
            result = {"versions": system.versions(), "settings": system.settings()}
        else:
            result = {"status": "ok"} | measure(system, args.measurement)
    except NotApplicable as e:
        result = {"status": "n/a", "reason": str(e)}
    except Exception as e:
        traceback.print_exc()
        result = {"status": "error", "error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:400]}
    finally:
        try:
            system.close()
        except Exception:
            traceback.print_exc()
    text = json.dumps(result)
    if args.json_out:
        Path(args.json_out).write_text(text)
    print(text, flush=True)


def ignore_sigint() -> None:
    """Workers are stopped through stdin; a terminal ^C goes to the runner."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
