"""Celery with its Redis broker and a thread pool of 8 (venv: .bench-venvs/celery).

Used as its documentation shows: ``Celery(broker=redis://...)``, a ``@app.task``,
``task.delay()`` to send; the worker is Celery's own ``app.Worker(pool_cls="threads",
concurrency=8)`` (what ``celery worker --pool threads --concurrency 8`` runs), one per
worker process, with heartbeat, mingle and gossip off (they only talk to other
workers). Everything else is Celery's default: acks on receipt (``acks_late=False``),
prefetch multiplier 4, JSON serialisation, no result backend (``ignore_result``).

Side channel: an acked-on-receipt message is gone from Redis before it runs, so the
workers count their completions in a file (one ``os.write`` per job) and a measurement
is over when that count reaches what was sent.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Any

import harness
import redis
from celery import Celery
from harness import QUEUE, DoneCounter, LatencyRecorder, dist_version, run_threads


def make_app(redis_url: str, recorder: LatencyRecorder | None, done: DoneCounter | None) -> tuple[Celery, Any]:
    app = Celery("bench", broker=redis_url)
    app.conf.update(
        task_default_queue=QUEUE,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="noop", ignore_result=True)
    def noop(i: int, t: float | None = None) -> None:
        if t is not None and recorder is not None:
            recorder.record(t)
        if done is not None:
            done.done()

    return app, noop


class CelerySystem(harness.System):
    name = "celery"

    def __init__(self, opts: harness.Options) -> None:
        super().__init__(opts)
        self.client = redis.Redis.from_url(opts.redis_url)
        self.app: Celery | None = None
        self.task: Any = None
        self.sent = 0
        self._sent_lock = threading.Lock()

    def setup(self) -> None:
        self.client.flushdb()
        if self.done_file:
            os.unlink(self.done_file)
        fd, self.done_file = tempfile.mkstemp(prefix="bench-done-celery-")
        os.close(fd)
        self.sent = 0
        self.app, self.task = make_app(self.opts.redis_url, None, None)

    def close(self) -> None:
        if self.app is not None:
            self.app.close()
        self.client.close()
        if self.done_file:
            os.unlink(self.done_file)
            self.done_file = None

    def _count(self, n: int) -> None:
        with self._sent_lock:
            self.sent += n

    def enqueue(self, n: int, producers: int) -> None:
        delay = self.task.delay

        def produce(r: range) -> None:
            for i in r:
                delay(i)

        run_threads(n, producers, produce)
        self._count(n)

    def send_timestamped(self, i: int) -> None:
        self.task.delay(i, time.time())
        self._count(1)

    def pending(self) -> bool:
        assert self.done_file is not None
        return DoneCounter.count(self.done_file) < self.sent

    def versions(self) -> dict[str, str]:
        info = self.client.info("server")
        return {
            "celery": dist_version("celery"),
            "kombu": dist_version("kombu"),
            "redis-py": dist_version("redis"),
            "redis-server": str(info.get("redis_version")),
        }

    def settings(self) -> dict[str, str]:
        return {
            "worker": "app.Worker(pool_cls='threads', concurrency=8) in each worker process "
            "(= celery worker --pool threads --concurrency 8), heartbeat/mingle/gossip off",
            "prefetch": "Celery default (worker_prefetch_multiplier=4 -> 32 per process)",
            "acks": "Celery default: on receipt (acks_late=False)",
            "broker": f"Redis transport, {self.opts.redis_url}, FLUSHDB before each measurement",
            "bulk": "n/a (no bulk publish; group() sends one message per task)",
            "side channel": "completions counted by the workers in a file (one write per job) = messages sent",
        }


def worker_main(args: argparse.Namespace) -> None:
    harness.ignore_sigint()
    recorder = LatencyRecorder(args.latency_file)
    done = DoneCounter(args.done_file) if args.done_file else None
    app, _task = make_app(args.redis_url, recorder, done)
    worker: Any = app.Worker(
        pool_cls="threads",
        concurrency=args.threads,
        loglevel="WARNING",
        quiet=True,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        queues=[QUEUE],
        hostname=f"bench{os.getpid()}@localhost",
    )
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return

    def wait_stop() -> None:
        while True:
            line = sys.stdin.readline()
            if not line or line.strip() == "STOP":
                break
        os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown

    threading.Thread(target=wait_stop, daemon=True).start()
    try:
        worker.start()
    finally:
        recorder.close()
        if done is not None:
            done.close()


if __name__ == "__main__":
    harness.main(CelerySystem, worker_main)
