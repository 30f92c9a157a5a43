"""Dramatiq's StubBroker: the ceiling of the Dramatiq worker itself.

The StubBroker keeps messages in an in-process ``queue.Queue``, so the worker
runs in the measuring process (1 process x 8 threads only; 2 processes: n/a).
Runs in the dramatiq-redis venv (same Dramatiq version as every other system).

With ``BENCH_STUB_MIDDLEWARE=ours`` (system ``stub-ours``, run with our
interpreter) the StubBroker gets neuron_tasks' default middleware list
(``neuron_tasks.core.broker.default_middleware``) instead of Dramatiq's: the
ceiling of the Dramatiq worker with our middleware, so that our drain can be
read as a fraction of it.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import dramatiq
import harness
from dramatiq.brokers.stub import StubBroker
from dramatiq_common import WORKER_TIMEOUT_MS, DramatiqSystem, declare_actor
from harness import dist_version

OUR_MIDDLEWARE = os.environ.get("BENCH_STUB_MIDDLEWARE", "dramatiq") == "ours"


def build_broker(db_url: str, redis_url: str) -> dramatiq.Broker:
    if not OUR_MIDDLEWARE:
        return StubBroker()
    from neuron_tasks.config import Settings
    from neuron_tasks.core.broker import default_middleware
    from neuron_tasks.core.keeper import Stats

    return StubBroker(middleware=default_middleware(Settings(), Stats()))


class InProcessWorkers(harness.WorkerGroup):
    def __init__(self, broker: dramatiq.Broker, threads: int, recorder: harness.LatencyRecorder) -> None:
        self.worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=WORKER_TIMEOUT_MS)
        self.recorder = recorder

    def go(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop(timeout=10_000)
        self.recorder.close()


class StubSystem(DramatiqSystem):
    name = "stub"
    max_procs = 1

    build_broker = staticmethod(build_broker)

    def __init__(self, opts: harness.Options) -> None:
        super().__init__(opts)
        self.recorder = harness.LatencyRecorder(None)

    def reset_storage(self) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Re-declare with a recorder the worker group can arm later.
        self._actor = None
        self.broker.actors.clear()
        self._actor = declare_actor(self.broker, self.recorder)

    def launch_workers(self, procs: int, threads: int, latency_file: str | None = None) -> harness.WorkerGroup:
        if procs != 1:
            raise harness.NotApplicable("in-process broker")
        if latency_file:
            self.recorder.fd = os.open(latency_file, os.O_WRONLY | os.O_APPEND)
        return InProcessWorkers(self.broker, threads, self.recorder)

    def pending(self) -> bool:
        queue: Any = self.broker.queues[harness.QUEUE]  # type: ignore[attr-defined]
        return int(queue.unfinished_tasks) > 0

    def problems(self) -> str | None:
        dead = self.broker.dead_letters  # type: ignore[attr-defined]
        return f"{len(dead)} dead-lettered" if dead else None

    def versions(self) -> dict[str, str]:
        return {"dramatiq": dist_version("dramatiq")}

    def settings(self) -> dict[str, str]:
        names = ", ".join(type(m).__name__ for m in self.build_broker("", "").middleware)
        return self.dramatiq_settings() | {
            "middleware": ("neuron_tasks' default list: " if OUR_MIDDLEWARE else "dramatiq defaults: ") + names,
            "broker": "StubBroker (in-process queue.Queue), worker in the measuring process",
            "bulk": "n/a",
            "side channel": "queue.unfinished_tasks == 0",
        }


def worker_main(args: argparse.Namespace) -> None:
    raise SystemExit("StubBroker has no separate worker process")


if __name__ == "__main__":
    harness.main(StubSystem, worker_main)
