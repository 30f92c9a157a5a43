"""One worker process: our broker, every part's actors and the user's, a Dramatiq Worker.

Started by `neuron-tasks worker` (see supervisor.py); SIGTERM drains gracefully:
running jobs get `shutdown_timeout_s`, prefetched and unfinished messages go back. Under the
supervisor, a repeated SIGTERM (one to the whole process group, then the supervisor's) is the
same drain; a process started alone exits at once on a second signal. The supervisor gives the
process its worker id (the lease owner it renews) and a pipe to report readiness and jobs on
(report.py).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading

import dramatiq
from pydantic import ValidationError

from neuron_tasks.config import Settings
from neuron_tasks.core import parts
from neuron_tasks.core.broker import WORKER_OWNER_ENV, PostgresBroker
from neuron_tasks.worker.report import JobReporter, Reporter
from neuron_tasks.worker.supervisor import EXIT_CONFIG_ERROR, EXIT_IMPORT_ERROR

log = logging.getLogger("neuron_tasks.worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neuron_tasks.worker.process")
    parser.add_argument("modules", nargs="*")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--queues", nargs="*", default=None)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--supervised", action="store_true", help="started by `neuron-tasks worker`")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format=f"%(asctime)s [worker {args.index}] %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = Settings()
    except ValidationError as exc:
        log.error("invalid settings: %s", exc)
        return EXIT_CONFIG_ERROR
    reporter = Reporter.from_env()
    broker: dramatiq.Broker = PostgresBroker(settings=settings)  # its owner: $NEURON_TASKS_WORKER_OWNER
    dramatiq.set_broker(broker)
    modules = [*parts.actor_modules(), *args.modules]  # every part's actors, then the user's
    try:
        for module in modules:
            importlib.import_module(module)
    except Exception:
        log.exception("could not import actor modules %s", modules)
        return EXIT_IMPORT_ERROR
    finally:
        # Brokers made by those modules took the worker id; processes that jobs start must not.
        os.environ.pop(WORKER_OWNER_ENV, None)
    broker = dramatiq.get_broker()  # a module may have set its own PostgresBroker
    if reporter is not None:
        broker.add_middleware(JobReporter(reporter))
    broker.emit_after("process_boot")
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if not stop.is_set():
            stop.set()
        elif args.supervised:
            # A SIGTERM to the process group reaches this process and its supervisor, which
            # forwards it: the same request, and the drain is already under way.
            log.debug("%s again: already draining", signal.Signals(signum).name)
        else:
            log.warning("second signal: exiting now; held messages return when their lease expires")
            sys.exit(1)

    signal.signal(signal.SIGTERM, on_signal)
    # Ctrl-C reaches the whole process group; the supervisor turns it into one SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN if args.supervised else on_signal)
    worker = dramatiq.Worker(broker, queues=set(args.queues) if args.queues else None, worker_threads=args.threads)
    worker.start()
    if reporter is not None:
        reporter.ready()
    log.info("worker ready: %d threads, queues %s", args.threads, sorted(broker.get_declared_queues()))
    parent = os.getppid()
    while not stop.wait(1.0):
        if args.supervised and os.getppid() != parent:
            log.warning("the supervisor is gone; draining and stopping")
            stop.set()
    log.info("stopping: running jobs get %.0fs to finish", settings.shutdown_timeout_s)
    worker.stop(timeout=int(settings.shutdown_timeout_s * 1000))
    parts.close_all()
    broker.close()
    if reporter is not None:
        reporter.close()
    log.info("worker stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
