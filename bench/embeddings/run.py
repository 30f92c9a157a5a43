"""Embedding jobs vs one direct model.encode(), in one run.

  python bench/embeddings/run.py [--texts 2000] [--threads 8] [--batch-sizes 10,32] [--json out.json]

Measures, on the local model (all-MiniLM-L6-v2, CPU unless --device cuda):
  direct     one model.encode() over all texts (the ceiling);
  singles    N single-text embed jobs (cross-message batching, per --batch-sizes);
  batched    N/100 jobs of 100 texts;
  cache hit  p50/p95 of a cached embed: the plain function (one lookup) and a whole job
             (enqueue -> worker -> result read by the caller).
Jobs run on an in-process dramatiq.Worker on the Postgres broker (the same process holds the
model, loaded once); every job stores its result in Postgres; the cache is cleared before each
phase so every phase computes every vector. Uses NEURON_TASKS_DATABASE_URL (a fresh database
is created on that server) or an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

import dramatiq
import psycopg
from psycopg.conninfo import make_conninfo

from neuron_tasks import PostgresBroker, Settings, embedded
from neuron_tasks.core import migrate
from neuron_tasks.llm.settings import LlmSettings

WORDS = ("queue", "vector", "postgres", "worker", "batch", "model", "cache", "tenant", "index", "retry",
         "latency", "search", "embedding", "token", "lease", "sweeper", "topic", "deadline", "shard", "replica")


def texts(n: int) -> list[str]:
    return [f"item {i}: the {WORDS[i % 20]} {WORDS[(i * 7) % 20]} needs a {WORDS[(i * 13) % 20]} soon"
            for i in range(n)]


def fresh_database(server: str) -> str:
    name = f"nt_bench_llm_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server, dbname=name)
    migrate.upgrade(url)
    return url


def drop_database(server: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clear(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE neuron_tasks.llm_cache, neuron_tasks.results, neuron_tasks.llm_usage")


def run_jobs(broker: PostgresBroker, messages: list[Any], url: str) -> float:
    """Seconds from enqueue until every job has finished (results stored before acks)."""
    started = time.perf_counter()
    for i in range(0, len(messages), 1000):
        broker.enqueue_many(messages[i:i + 1000])
    broker.join("llm", timeout=600_000)
    elapsed = time.perf_counter() - started
    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT count(*) FROM neuron_tasks.results").fetchone()[0]
        failed = conn.execute("SELECT count(*) FROM neuron_tasks.messages WHERE state = 'failed'").fetchone()[0]
    if stored != len(messages) or failed:
        raise SystemExit(f"expected {len(messages)} results, found {stored} ({failed} failed)")
    return elapsed


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--per-job", type=int, default=100)
    ap.add_argument("--threads", type=int, default=16, help="worker threads (at least the largest batch size)")
    ap.add_argument("--batch-sizes", default="10,32", help="llm_batch_size values for the single-text phase")
    ap.add_argument("--linger-ms", type=float, default=5.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads in the jobs (0: default)")
    ap.add_argument("--hits", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="repeat every phase; medians are reported")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    server = os.environ.get("NEURON_TASKS_DATABASE_URL") or embedded.start(None)
    url = fresh_database(server)
    items = texts(args.texts)
    out: dict[str, Any] = {"texts": args.texts, "threads": args.threads, "device": args.device}
    from neuron_tasks.llm.local import load_model

    t0 = time.perf_counter()
    model = load_model(device=args.device)
    out["model_load_s"] = time.perf_counter() - t0
    model.encode(items[:64], batch_size=64, normalize_embeddings=True)  # warm-up
    import torch

    default_threads = torch.get_num_threads()

    def direct() -> float:
        """The faster of one encode with torch's default threads and one with the jobs' threads."""
        best = float("inf")
        for n in dict.fromkeys([default_threads, args.torch_threads or default_threads]):
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            model.encode(items, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=False)
            secs = time.perf_counter() - t0
            best = min(best, secs)
            print(f"direct encode ({n} torch threads): {args.texts} texts in {secs:.2f}s = "
                  f"{args.texts / secs:.0f} texts/s", flush=True)
        torch.set_num_threads(args.torch_threads or default_threads)
        return best

    settings = Settings(database_url=url)
    broker = PostgresBroker(url, settings=settings)
    dramatiq.set_broker(broker)
    name = "neuron_tasks.llm.actors"
    actors = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    threads = max([args.threads, *sizes])
    out["worker_threads"] = threads
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=20)
    worker.start()
    try:
        out["torch_threads"] = {"direct": default_threads, "jobs": args.torch_threads or default_threads}
        runs: dict[str, list[dict[str, float]]] = {}

        def record(phase: str, secs: float, direct_s: float, **extra: float) -> None:
            runs.setdefault(phase, []).append({"seconds": secs, "texts_per_s": args.texts / secs,
                                               "ratio": direct_s / secs, **extra})

        for rnd in range(args.rounds):
            print(f"-- round {rnd + 1} of {args.rounds}", flush=True)
            direct_s = direct()
            record("direct", direct_s, direct_s)
            for bs in sizes:
                rt = actors.configure(LlmSettings(llm_provider="local", llm_local_device=args.device,
                                                  llm_batch_size=bs, llm_batch_linger_ms=args.linger_ms),
                                      pool=broker.pool)
                clear(url)
                secs = run_jobs(broker, [actors.embed.message([t]) for t in items], url)
                b = rt.batcher
                per_call = b.requests / max(b.calls, 1)
                record(f"singles_bs{bs}", secs, direct_s, model_calls=b.calls, messages_per_call=per_call)
                print(f"{args.texts} single-text jobs (batch_size {bs}): {secs:.2f}s = {args.texts / secs:.0f} "
                      f"texts/s, {direct_s / secs:.2f}x direct; {b.calls} model calls, {per_call:.1f} messages "
                      "per call", flush=True)
            rt = actors.configure(LlmSettings(llm_provider="local", llm_local_device=args.device), pool=broker.pool)
            clear(url)
            n = args.per_job
            secs = run_jobs(broker, [actors.embed.message(items[i:i + n]) for i in range(0, args.texts, n)], url)
            record("batched", secs, direct_s)
            print(f"{args.texts // n} jobs of {n}: {secs:.2f}s = {args.texts / secs:.0f} texts/s, "
                  f"{direct_s / secs:.2f}x direct", flush=True)
        out["runs"] = runs
        out["median"] = {phase: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for phase, rs in runs.items()}
        print("medians over rounds (ratio = direct seconds / phase seconds, per round):", flush=True)
        for phase, m in out["median"].items():
            print(f"  {phase:16s} {m['texts_per_s']:7.0f} texts/s  ratio {m['ratio']:.2f}", flush=True)

        service = rt.service
        fn_ms = []
        for i in range(args.hits):
            t0 = time.perf_counter()
            r = service.embed([items[i % args.texts]])
            fn_ms.append((time.perf_counter() - t0) * 1000)
            assert r["cached"] == 1
        job_ms = []
        for i in range(min(args.hits, 100)):
            t0 = time.perf_counter()
            r = actors.embed.send([items[i]]).get_result(block=True, timeout=10_000)
            job_ms.append((time.perf_counter() - t0) * 1000)
            assert r["cached"] == 1
        out["cache_hit_function_ms"] = {"p50": statistics.median(fn_ms), "p95": pct(fn_ms, 95)}
        out["cache_hit_job_ms"] = {"p50": statistics.median(job_ms), "p95": pct(job_ms, 95)}
        print(f"cache hit, plain function: p50 {statistics.median(fn_ms):.2f} ms, p95 {pct(fn_ms, 95):.2f} ms",
              flush=True)
        print(f"cache hit, whole job (send -> worker -> result): p50 {statistics.median(job_ms):.1f} ms, "
              f"p95 {pct(job_ms, 95):.1f} ms", flush=True)
    finally:
        worker.stop(timeout=10_000)
        broker.close()
        drop_database(server, url)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
