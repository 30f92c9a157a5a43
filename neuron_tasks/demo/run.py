"""`neuron-tasks demo`: real workers on the real broker, a mix of jobs, live progress."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from types import ModuleType
from typing import Any

import dramatiq
import psycopg
from psycopg.rows import dict_row, scalar_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from neuron_tasks import db
from neuron_tasks.config import Settings
from neuron_tasks.core.admin import Repo
from neuron_tasks.core.broker import PostgresBroker
from neuron_tasks.sql import q


def run_demo(url: str, settings: Settings, *, jobs: int, processes: int, console: Console) -> int:
    console.rule("[bold]neuron_tasks demo")
    console.print(f"database: {db.redact(url)}")
    broker = PostgresBroker(url, settings=settings)
    dramatiq.set_broker(broker)
    from neuron_tasks.demo import actors as actors

    broker.flush_all()
    log_path = os.path.join(tempfile.gettempdir(), f"neuron-tasks-demo-{os.getpid()}.log")
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed below
    env = {**os.environ, db.URL_ENV: url}
    worker = subprocess.Popen(
        [sys.executable, "-m", "neuron_tasks.cli", "worker", "neuron_tasks.demo.actors",
         "-p", str(processes), "-t", "4"],
        env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )
    console.print(f"started {processes} worker processes x 4 threads (pid {worker.pid}); log: {log_path}")
    started = time.time()
    repo = Repo(broker.pool)
    counts = RunCounts(broker.pool, actors.DEMO_QUEUES)  # this run's messages only
    try:
        expected = enqueue_mix(broker, url, actors, jobs, console)
        ok = watch(counts, expected, console)
        show_queues(counts, console)
        show_result(actors, console)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log_file.close()
    console.print("workers stopped by SIGTERM (graceful drain); their final counters:")
    show_workers(repo, settings, started, console)
    broker.close()
    ok = run_phases(url, settings, console) and ok
    console.print("\nTry next:")
    console.print("  neuron-tasks status            neuron-tasks dead-letters list")
    console.print("  neuron-tasks dead-letters show ID   neuron-tasks dead-letters requeue --all --queue demo")
    return 0 if ok else 1


def run_phases(url: str, settings: Settings, console: Console) -> bool:
    """The demo phases every part declares, in their order."""
    from neuron_tasks.core import parts

    ok = True
    for demo in parts.demos():
        console.rule(f"[bold]{demo.name}")
        ok = bool(parts.loader(demo.run)(url, settings, console)) and ok
    return ok


def enqueue_mix(broker: PostgresBroker, url: str, actors: ModuleType, jobs: int, console: Console) -> dict[str, int]:
    a = actors
    broker.enqueue_many([a.add.message(i, i) for i in range(jobs)])
    for i in range(40):
        a.slow.send(20 + i % 30)
    for i in range(5):
        a.add.send_with_options(args=(i, 1000), priority=-10)
        a.add.send_with_options(args=(i, 2000), delay=1500)
    for i in range(10):
        a.flaky.send(f"flaky-{i}", 1 + i % 2)
    for i in range(3):
        a.always_fails.send(f"bad-{i}")
    with psycopg.connect(url) as conn:
        with conn.transaction():
            for i in range(10):
                conn.execute(q("demo_enqueue_add"), {"args": Jsonb([i, -i])})
        try:
            with conn.transaction():
                for i in range(5):
                    conn.execute(q("demo_enqueue_add"), {"args": Jsonb([i, 99])})
                raise RuntimeError("rollback")
        except RuntimeError:
            pass
    expected = {"finished": jobs + 40 + 10 + 10 + 10, "failed": 3}
    console.print(
        f"enqueued {jobs} quick jobs in one bulk insert, 40 slow, 5 high-priority, 5 delayed 1.5s, "
        "10 flaky (retried), 3 that always fail (-> dead letters), 10 from SQL in a committed transaction "
        "and 5 in a rolled-back one (never run)"
    )
    return expected


class RunCounts:
    """The demo queues' messages enqueued since this run began: an earlier run's are not counted."""

    def __init__(self, pool: ConnectionPool, queues: tuple[str, ...]) -> None:
        self.pool, self.queues = pool, list(queues)
        with pool.connection() as conn, conn.cursor(row_factory=scalar_row) as cur:
            self.since = cur.execute(q("now")).fetchone()

    def queues_status(self) -> list[dict[str, Any]]:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(q("demo_queue_counts"), {"queues": self.queues, "since": self.since}).fetchall()

    def dead_letters(self, limit: int = 10) -> list[dict[str, Any]]:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(q("demo_dead_letters"), {"queues": self.queues, "since": self.since,
                                                        "limit": limit}).fetchall()


def watch(counts: RunCounts, expected: dict[str, int], console: Console) -> bool:
    """Show progress until every demo message finished or failed; True when the counts are right."""
    total = expected["finished"] + expected["failed"]
    deadline = time.monotonic() + 120
    stalled_after = time.monotonic() + 30
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("processing", total=total, detail="")
        while time.monotonic() < deadline:
            rows = counts.queues_status()
            finished = sum(r["finished"] for r in rows)
            failed = sum(r["failed"] for r in rows)
            live = sum(r["pending"] + r["running"] + r["retrying"] for r in rows)
            retrying = sum(r["retrying"] for r in rows)
            progress.update(task, completed=finished + failed,
                            detail=f"finished {finished}  retrying {retrying}  dead {failed}")
            if live == 0 and finished + failed >= total:
                break
            if time.monotonic() > stalled_after and finished + failed == 0:
                console.print("[red]no message finished after 30 s: see the worker log[/]")
                break
            time.sleep(0.2)
    ok = finished == expected["finished"] and failed == expected["failed"]
    mark = "[green]as expected[/]" if ok else "[red]NOT as expected[/]"
    console.print(f"finished {finished} (expected {expected['finished']}), dead letters {failed} "
                  f"(expected {expected['failed']}): {mark}")
    return ok


def show_queues(counts: RunCounts, console: Console) -> None:
    table = Table(title="Queues (this run's messages)")
    for col in ("queue", "pending", "running", "retrying", "failed", "finished"):
        table.add_column(col)
    for r in counts.queues_status():
        table.add_row(r["queue"], *(str(r[c]) for c in ("pending", "running", "retrying", "failed", "finished")))
    console.print(table)
    dead = Table(title="Dead letters")
    for col in ("id", "actor", "retries", "last error"):
        dead.add_column(col, overflow="fold")
    for r in counts.dead_letters(limit=10):
        dead.add_row(str(r["id"]), r["actor_name"], str(r["retries"]), r["last_error"] or "")
    console.print(dead)


def show_result(actors: ModuleType, console: Console) -> None:
    """Send one job that stores its result and read it back, as any process can."""
    message = actors.add.send(2, 3)
    value = message.get_result(block=True, timeout=30_000)
    console.print(f"add(2, 3) = {value}: stored in neuron_tasks.results by the worker, read back here with "
                  "message.get_result(block=True)", highlight=False)


def show_workers(repo: Repo, settings: Settings, since: float, console: Console) -> None:
    workers = Table(title="Workers")
    for col in ("worker", "status", "processed", "failed", "avg ms"):
        workers.add_column(col)
    for w in repo.workers():
        if w["started_at"].timestamp() < since:
            continue
        avg = w["avg_runtime_ms"]
        workers.add_row(w["worker_name"], w["status"], str(w["jobs_processed"]), str(w["jobs_failed"]),
                        "-" if avg is None else f"{avg:.1f}")
    console.print(workers)
