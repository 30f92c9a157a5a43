"""pgqueuer 1.6.0 with its own async worker (venv: .bench-venvs/pgq).

Used as its README shows: asyncpg driver, ``PgQueuer(AsyncpgDriver(conn))``,
``@pgq.entrypoint(...)``, ``await pgq.run(...)`` (what ``pgq run`` calls),
schema via ``Queries.install()`` (what ``pgq install`` runs, durability
``durable``: all tables LOGGED), uvloop as its CLI does.

Two configurations, chosen by environment variables (run.py sets them):

* ``pgqueuer`` (c8): ``entrypoint(concurrency_limit=8 x processes)``, the
  "concurrency 8" setting. pgqueuer enforces that limit in SQL across all
  workers, so 8 per process = 16 in total for 2 processes. ``batch_size=8``:
  with its default ``batch_size=10`` the completion-log buffer (flushed at
  ``batch_size`` items or on a timer) never fills while at most 8 jobs are in
  flight, and a 1-process drain crawls at ~80 jobs/s.
* ``pgqueuer-max``: its defaults as in its own benchmark (``batch_size=10``,
  no concurrency limit): with an async no-op handler, the best case.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time

import asyncpg
import harness
import pgutil
import uvloop
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

ENTRYPOINT = "noop"
BATCH_SIZE = int(os.environ.get("BENCH_PGQ_BATCH", "8"))
CONCURRENCY_PER_PROCESS = int(os.environ.get("BENCH_PGQ_LIMIT", "8"))
MAX_CONCURRENT_TASKS = int(os.environ.get("BENCH_PGQ_MAX_TASKS", "0")) or None


class PgqSystem(harness.System):
    name = "pgqueuer"

    def __init__(self, opts: harness.Options) -> None:
        super().__init__(opts)
        self.runner: asyncio.Runner | None = None
        self.conns: list[asyncpg.Connection] = []
        self.probe: pgutil.Probe | None = None

    def _run(self, coro):  # type: ignore[no-untyped-def]
        if self.runner is None:
            self.runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        return self.runner.run(coro)

    def setup(self) -> None:
        pgutil.recreate_database(self.opts.db_url)

        async def prepare() -> list[asyncpg.Connection]:
            conns = [await asyncpg.connect(self.opts.db_url) for _ in range(4)]
            await Queries(AsyncpgDriver(conns[0])).install()
            return conns

        self.conns = self._run(prepare())
        # Two EXISTS answered by partial indexes (a bare ``EXISTS pgqueuer``
        # seq-scans the dead rows that completed jobs leave at the heap's head).
        self.probe = pgutil.Probe(
            self.opts.db_url,
            "SELECT EXISTS (SELECT 1 FROM pgqueuer WHERE entrypoint = 'noop' AND status = 'queued') "
            "OR EXISTS (SELECT 1 FROM pgqueuer WHERE status = 'picked')",
        )

    def close(self) -> None:
        async def close_all() -> None:
            for c in self.conns:
                await c.close()

        if self.conns:
            self._run(close_all())
        if self.runner is not None:
            self.runner.close()
        if self.probe is not None:
            self.probe.close()

    def enqueue(self, n: int, producers: int) -> None:
        # ``producers`` concurrent asyncio tasks, one connection each (as
        # pgqueuer's own benchmark producers), single-job enqueue() calls.
        size = n // producers

        async def produce(conn: asyncpg.Connection, r: range) -> None:
            q = Queries(AsyncpgDriver(conn))
            for i in r:
                await q.enqueue(ENTRYPOINT, str(i).encode())

        async def all_producers() -> None:
            await asyncio.gather(
                *(
                    produce(
                        self.conns[k],
                        range(k * size, n if k == producers - 1 else (k + 1) * size),
                    )
                    for k in range(producers)
                )
            )

        self._run(all_producers())

    def enqueue_bulk(self, n: int, chunk: int) -> None:
        async def bulk() -> None:
            q = Queries(AsyncpgDriver(self.conns[0]))
            for start in range(0, n, chunk):
                k = min(chunk, n - start)
                await q.enqueue(
                    [ENTRYPOINT] * k,
                    [str(i).encode() for i in range(start, start + k)],
                    [0] * k,
                )

        self._run(bulk())

    def send_timestamped(self, i: int) -> None:
        async def one() -> None:
            q = Queries(AsyncpgDriver(self.conns[0]))
            await q.enqueue(ENTRYPOINT, f"{i} {time.time()!r}".encode())

        self._run(one())

    def pending(self) -> bool:
        assert self.probe is not None
        return self.probe.pending()

    def problems(self) -> str | None:
        assert self.probe is not None
        n = self.probe.scalar("SELECT count(*) FROM pgqueuer_log WHERE status IN ('exception', 'failed')")
        return f"{n} failed" if n else None

    def versions(self) -> dict[str, str]:
        return {
            "pgqueuer": harness.dist_version("pgqueuer"),
            "asyncpg": harness.dist_version("asyncpg"),
            "uvloop": harness.dist_version("uvloop"),
            "postgres": pgutil.server_version(self.opts.db_url),
        }

    def settings(self) -> dict[str, str]:
        return {
            "worker": f"PgQueuer(AsyncpgDriver(conn)).run(batch_size={BATCH_SIZE}, "
            f"max_concurrent_tasks={MAX_CONCURRENT_TASKS}), uvloop, async handler",
            "concurrency": (
                f"entrypoint concurrency_limit = {CONCURRENCY_PER_PROCESS} x processes (enforced in SQL across workers)"
                if CONCURRENCY_PER_PROCESS
                else "entrypoint concurrency_limit = 0 (unlimited, its default)"
            ),
            "durability": "durable (all tables LOGGED, its default)",
            "bulk": f"Queries.enqueue(list, list, list), {self.opts.bulk_chunk} jobs per call",
            "producers": "N asyncio tasks with one asyncpg connection each (not threads)",
            "side channel": "EXISTS pgqueuer status queued or picked (finished jobs are deleted, "
            "logged to pgqueuer_log)",
        }


def worker_main(args: argparse.Namespace) -> None:
    harness.ignore_sigint()
    recorder = harness.LatencyRecorder(args.latency_file)

    async def amain() -> None:
        conn = await asyncpg.connect(args.db_url)
        pgq = PgQueuer(AsyncpgDriver(conn))

        @pgq.entrypoint(ENTRYPOINT, concurrency_limit=CONCURRENCY_PER_PROCESS * args.procs)
        async def noop(job: Job) -> None:
            if job.payload:
                parts = job.payload.split()
                if len(parts) == 2:
                    recorder.record(float(parts[1]))

        loop = asyncio.get_running_loop()
        print("READY", flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "GO":
            return

        def wait_stop() -> None:
            while True:
                ln = sys.stdin.readline()
                if not ln or ln.strip() == "STOP":
                    break
            loop.call_soon_threadsafe(pgq.shutdown.set)

        threading.Thread(target=wait_stop, daemon=True).start()
        await pgq.run(batch_size=BATCH_SIZE, max_concurrent_tasks=MAX_CONCURRENT_TASKS)
        await conn.close()

    uvloop.run(amain())
    recorder.close()


if __name__ == "__main__":
    harness.main(PgqSystem, worker_main)
