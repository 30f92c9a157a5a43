"""bench/middleware: what the job-queue semantics cost, measured on a real PostgreSQL.

  python bench/middleware/run.py [--database-url URL] [--messages 10000] [--rate-seconds 30] [--json out.json]

1. Drain rate of no-op jobs (1 process x 8 threads) with every middleware on vs the bare broker
   (no middleware at all), for plain messages and for messages of a configured tenant with a high QPS
   limit (each of those takes a token from the shared bucket: one extra round trip per message).
2. Drain of no-op jobs in a topic with concurrency 8 vs no topic (8 threads; goal >= 0.8x).
3. Rate-limit accuracy: 3 tenants limited to 10, 25 and 50 QPS with burst 5, each with a backlog,
   drained together by 1 process x 16 threads for --rate-seconds; achieved QPS / configured QPS
   after the burst (goal 0.95-1.02).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from neuron_tasks import PostgresBroker, Settings
from neuron_tasks.core import migrate
from neuron_tasks.core.tenancy import set_tenant
from neuron_tasks.core.topics import set_topic

DB = "bench_middleware"


def fresh_db(server: str) -> str:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")
    url = make_conninfo(server, dbname=DB)
    migrate.upgrade(url)
    return url


def reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE neuron_tasks.messages, neuron_tasks.messages_history, neuron_tasks.workers, "
                     "neuron_tasks.tenants, neuron_tasks.tenant_buckets, neuron_tasks.tenant_usage, "
                     "neuron_tasks.topics, neuron_tasks.topic_slots")
        conn.execute("VACUUM ANALYZE neuron_tasks.messages")


def drain(url: str, n: int, *, bare: bool, threads: int = 8, job_ms: float = 0.0, **options: Any) -> float:
    """Enqueue n messages (no-op, or sleeping job_ms), then time a worker draining them; messages/s."""
    reset(url)
    settings = Settings(database_url=url, queue_depth=max(n * 2, 10_000))
    broker = PostgresBroker(settings=settings, middleware=[] if bare else None)
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name="bench", max_retries=0)
    def noop(i: int) -> None:
        if job_ms:
            time.sleep(job_ms / 1000.0)

    if "tenant" in options:
        set_tenant(broker.pool, options["tenant"], qps=1e6, burst=1e6)
    if "topic" in options:
        set_topic(broker.pool, options["topic"], concurrency=options.pop("_concurrency", None))
    for start in range(0, n, 5000):
        chunk = range(start, min(n, start + 5000))
        broker.enqueue_many([noop.message_with_options(args=(i,), **options) for i in chunk])
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    began = time.perf_counter()
    worker.start()
    broker.join("bench", timeout=600_000)
    took = time.perf_counter() - began
    worker.stop()
    broker.close()
    return n / took


def rate_accuracy(url: str, seconds: float) -> list[dict[str, Any]]:
    reset(url)
    limits = {"t10": 10.0, "t25": 25.0, "t50": 50.0}
    burst = 5.0
    settings = Settings(database_url=url, queue_depth=100_000)
    broker = PostgresBroker(settings=settings)
    dramatiq.set_broker(broker)
    for name, qps in limits.items():
        set_tenant(broker.pool, name, qps=qps, burst=burst)

    @dramatiq.actor(queue_name="bench", max_retries=0)
    def noop(i: int) -> None:
        pass

    for name, qps in limits.items():
        backlog = range(int(qps * (seconds + 10)))
        broker.enqueue_many([noop.message_with_options(args=(i,), tenant=name) for i in backlog])
    worker = dramatiq.Worker(broker, worker_threads=16, worker_timeout=100)
    worker.start()
    time.sleep(seconds)
    worker.stop()
    out = []
    with psycopg.connect(url) as conn:
        for name, qps in limits.items():
            first, last, count = conn.execute(
                "SELECT min(started_at), max(started_at), count(*) FROM neuron_tasks.messages_history "
                "WHERE tenant = %s",
                (name,),
            ).fetchone()
            span = (last - first).total_seconds() if count > 1 else 0.0
            achieved = (count - burst) / span if span > 0 else 0.0
            out.append({"tenant": name, "qps": qps, "jobs": count, "span_s": round(span, 2),
                        "achieved_qps": round(achieved, 2), "ratio": round(achieved / qps, 3)})
    broker.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rate-seconds", type=float, default=30.0)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    url = fresh_db(args.database_url)
    n = args.messages
    results: dict[str, Any] = {}
    bare = drain(url, n, bare=True)
    full = drain(url, n, bare=False)
    tenant = drain(url, n, bare=False, tenant="acme")
    results["drain"] = {"bare": bare, "all_middleware": full, "all_middleware_with_tenant": tenant}
    unlimited = drain(url, n, bare=False)
    topic8 = drain(url, n, bare=False, topic="capped", _concurrency=8)
    slow_n = max(n // 5, 500)
    unlimited_10 = drain(url, slow_n, bare=False, job_ms=10)
    topic8_10 = drain(url, slow_n, bare=False, job_ms=10, topic="capped", _concurrency=8)
    results["topic"] = {"no_topic": unlimited, "topic_concurrency_8": topic8,
                        "no_topic_10ms_jobs": unlimited_10, "topic_concurrency_8_10ms_jobs": topic8_10}
    results["rate"] = rate_accuracy(url, args.rate_seconds)

    print(f"\nbench/middleware  ({n} no-op messages per drain, 1 process x 8 threads)\n")
    print(f"{'measurement':48} {'msg/s':>10} {'ratio':>8}  goal")
    print(f"{'drain, bare broker (no middleware)':48} {bare:10.0f}")
    print(f"{'drain, all middleware':48} {full:10.0f} {full / bare:8.2f}  >= 0.85 of bare")
    print(f"{'drain, all middleware, tenant with a QPS limit':48} {tenant:10.0f} {tenant / bare:8.2f}  (shared bucket)")
    print(f"{'drain, no topic':48} {unlimited:10.0f}")
    print(f"{'drain, topic concurrency 8':48} {topic8:10.0f} {topic8 / unlimited:8.2f}  >= 0.8 of no topic")
    print(f"{'drain, 10 ms jobs, no topic':48} {unlimited_10:10.0f}")
    print(f"{'drain, 10 ms jobs, topic concurrency 8':48} {topic8_10:10.0f} {topic8_10 / unlimited_10:8.2f}  "
          ">= 0.8 of no topic")
    print(f"\nrate-limit accuracy over {args.rate_seconds:.0f} s, burst 5, 3 tenants at once (goal 0.95-1.02)")
    for r in results["rate"]:
        print(f"  {r['tenant']:5} limit {r['qps']:5.1f} qps: {r['jobs']:5d} jobs in {r['span_s']:6.2f} s -> "
              f"{r['achieved_qps']:6.2f} qps, ratio {r['ratio']:.3f}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
