"""Shared rate limit: 2 worker processes x 2 threads against a fake provider
enforcing 60 requests per minute (fixed window, x-ratelimit-* headers, 429 + Retry-After).

  python bench/embeddings/ratelimit.py [--calls 150] [--limit 60] [--window 60]

Counts how many of the provider's answers were 429 (goal: under 1 %), and the throughput
against the limit. Uses NEURON_TASKS_DATABASE_URL (a fresh database on that server) or an
embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dramatiq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import drop_database, fresh_database

from neuron_tasks import PostgresBroker, Settings, embedded
from neuron_tasks.testing.fake_llm import FakeProvider

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=150)
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    server = os.environ.get("NEURON_TASKS_DATABASE_URL") or embedded.start(None)
    url = fresh_database(server)
    log_path = Path(tempfile.gettempdir()) / f"nt-bench-ratelimit-{os.getpid()}.log"
    with FakeProvider(limit=args.limit, window_s=args.window) as fake, log_path.open("wb") as log:
        env = {**os.environ, "NEURON_TASKS_DATABASE_URL": url, "NEURON_TASKS_LLM_PROVIDER": "http",
               "NEURON_TASKS_LLM_HTTP_BASE_URL": fake.base_url, "NEURON_TASKS_LLM_PACE_MAX_WAIT_S": "5",
               "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "neuron_tasks.cli", "worker", "neuron_tasks.llm.actors",
                                 "-p", str(args.processes), "-t", str(args.threads)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        broker = PostgresBroker(url, settings=Settings(database_url=url))
        dramatiq.set_broker(broker)
        actors = importlib.import_module("neuron_tasks.llm.actors")
        try:
            started = time.monotonic()
            messages = broker.enqueue_many([actors.complete.message(f"call {i}", cache=False)
                                            for i in range(args.calls)])
            done = 0
            for m in messages:
                m.get_result(block=True, timeout=int((args.calls / args.limit + 3) * args.window * 1000))
                done += 1
            elapsed = time.monotonic() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            broker.close()
        answered = fake.count()
        throttled = fake.count(status=429)
    drop_database(server, url)
    ideal = (math.ceil(args.calls / args.limit) - 1) * args.window  # fixed windows: the last one starts then
    print(f"{done} calls by {args.processes} processes x {args.threads} threads against {args.limit} requests / "
          f"{args.window:.0f}s: {answered} provider answers, {throttled} were 429 "
          f"({100 * throttled / max(answered, 1):.2f} %); {elapsed:.1f}s (at least {ideal:.0f}s by the limit)")
    return 0 if throttled < 0.01 * answered else 1


if __name__ == "__main__":
    sys.exit(main())
