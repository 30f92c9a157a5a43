"""Embedding jobs vs direct model.encode() on the same machine, in the same run.

  python bench/embeddings/run.py [--texts 2000] [--threads 8,64] [--encodings json,f32] [--nocost] [--json out.json]

Every round measures, back to back, on the local model (all-MiniLM-L6-v2, CPU unless --device cuda):
  direct b256   one model.encode() over all texts in batches of 256 (the ceiling of batched jobs);
  direct c64    model.encode() called once per 64 texts (the ceiling of single-text jobs);
  singles       N single-text embed jobs (llm_batch_size --batch-size), per --threads;
  batched       N/100 jobs of 100 texts;
and compares singles with direct c64, batched with direct b256: ratio = direct seconds / phase
seconds; cpu_ratio = direct CPU per text / (this process's + the database backends' CPU per
text), steadier than wall time on a shared machine.
--nocost adds the same job phases with a no-cost embedder (nocost.py) and a trivial job (the
queue's own floor), reporting our CPU per message and per text (this process and the database's
backends), and LlmService.embed_many's own cost per text. Last, cache-hit latency.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nocost import Cpu, FixedVectors

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


class Bench:
    """One database, one broker, one in-process worker per thread count."""

    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args, self.url = args, url
        self.broker = PostgresBroker(url, settings=Settings(database_url=url))
        dramatiq.set_broker(self.broker)
        name = "neuron_tasks.llm.actors"
        self.actors = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)

        @dramatiq.actor(actor_name="bench_trivial", queue_name="llm", store_results=True)
        def trivial(texts: list[str]) -> dict[str, int]:
            return {"texts": len(texts)}

        self.trivial = trivial
        self.worker: dramatiq.Worker | None = None
        self.threads = 0

    def use_threads(self, n: int) -> None:
        if self.threads == n:
            return
        if self.worker is not None:
            old = self.worker
            old.stop(timeout=10_000)
            # a stopped Worker leaves its hook middleware on the broker: take it off
            self.broker.middleware[:] = [m for m in self.broker.middleware if getattr(m, "worker", None) is not old]
        self.worker = dramatiq.Worker(self.broker, worker_threads=n, worker_timeout=20)
        self.worker.start()
        self.threads = n

    def configure(self, batch_size: int, provider: str = "local") -> Any:
        a = self.args
        rt = self.actors.configure(LlmSettings(llm_provider="local", llm_local_device=a.device,
                                               llm_local_threads=a.torch_threads, llm_batch_size=batch_size,
                                               llm_batch_linger_ms=a.linger_ms), pool=self.broker.pool)
        if provider != "local":
            rt.service.use_provider(FixedVectors())
        return rt

    def jobs(self, items: list[str], per_job: int, threads: int, *, provider: str = "local", encoding: str = "json",
             trivial: bool = False) -> dict[str, float]:
        """Run len(items)/per_job embed jobs; seconds, texts/s, messages per model call, CPU."""
        self.use_threads(threads)
        rt = self.configure(self.args.batch_size, provider)
        clear(self.url)
        kw: dict[str, Any] = {}
        if not trivial:
            kw = {"provider": provider} if provider != "local" else {}
            if encoding != "json":
                kw["encoding"] = encoding
        actor = self.trivial if trivial else self.actors.embed
        messages = [actor.message(items[i:i + per_job], **kw) for i in range(0, len(items), per_job)]
        cpu = Cpu(self.url)
        cpu.start()
        secs = run_jobs(self.broker, messages, self.url)
        spent = cpu.stop()
        b = rt.batcher
        out = {"seconds": secs, "texts_per_s": len(items) / secs, "messages": len(messages),
               "messages_per_model_call": b.requests / max(b.calls, 1),
               "python_ms_per_message": spent.python_s / len(messages) * 1000,
               "python_ms_per_text": spent.python_s / len(items) * 1000}
        if spent.postgres_s is not None:
            out["postgres_ms_per_message"] = spent.postgres_s / len(messages) * 1000
            out["postgres_ms_per_text"] = spent.postgres_s / len(items) * 1000
        return out


def direct(model: Any, items: list[str], call_size: int, batch_size: int) -> dict[str, float]:
    """Encode `items` in calls of `call_size` texts (batch_size inside a call): seconds, texts/s
    and CPU milliseconds per text (every thread of this process)."""
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, len(items), call_size):
        model.encode(items[i:i + call_size], batch_size=batch_size, convert_to_numpy=True,
                     normalize_embeddings=True, show_progress_bar=False)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "texts_per_s": len(items) / secs,
            "python_ms_per_text": (time.process_time() - c0) / len(items) * 1000}


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Median of every number over the rounds; for ratios also min and max (the noise)."""
    out: dict[str, dict[str, float]] = {}
    for phase, rs in runs.items():
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        for k in ("ratio", "cpu_ratio"):
            if k in rs[0]:
                m[f"{k}_min"], m[f"{k}_max"] = min(r[k] for r in rs), max(r[k] for r in rs)
        out[phase] = m
    return out


def show(phase: str, r: dict[str, float]) -> None:
    extra = "".join(f", {k} {r[k]:.2f}" for k in ("ratio", "cpu_ratio", "messages_per_model_call",
                                                   "python_ms_per_message", "postgres_ms_per_message",
                                                   "python_ms_per_text", "postgres_ms_per_text") if k in r)
    print(f"  {phase:28s} {r['texts_per_s']:8.0f} texts/s{extra}", flush=True)


def model_rounds(bench: Bench, model: Any, items: list[str], out: dict[str, Any]) -> None:
    a = bench.args
    runs: dict[str, list[dict[str, float]]] = {}

    def record(phase: str, r: dict[str, float], against: dict[str, float] | None = None) -> None:
        if against is not None:
            r["ratio"] = against["seconds"] / r["seconds"]
            if "postgres_ms_per_text" in r:  # the same comparison in CPU time, which load disturbs less
                r["cpu_ratio"] = against["python_ms_per_text"] / (r["python_ms_per_text"] + r["postgres_ms_per_text"])
        runs.setdefault(phase, []).append(r)
        show(phase, r)

    n = len(items)
    for rnd in range(a.rounds):
        print(f"-- round {rnd + 1} of {a.rounds} ({n} texts, model on {a.device})", flush=True)
        b256 = direct(model, items, n, 256)
        c64 = direct(model, items, 64, 64)
        record("direct_b256", b256)
        record("direct_c64", c64)
        for size in a.direct_calls:
            record(f"direct_c{size}", direct(model, items, size, size))
        for enc in a.encodings:
            for t in a.threads:
                record(f"singles_{enc}_t{t}", bench.jobs(items, 1, t, encoding=enc), c64)
            record(f"batched{a.per_job}_{enc}_t{a.threads[0]}", bench.jobs(items, a.per_job, a.threads[0],
                                                                          encoding=enc), b256)
    out["model_runs"] = runs
    out["model_median"] = summarise(runs)


def nocost_rounds(bench: Bench, out: dict[str, Any]) -> None:
    """The job phases with the model taken out; and embed_many's own cost per text."""
    from neuron_tasks.llm.service import EmbedRequest

    a = bench.args
    items = texts(a.nocost_texts)
    runs: dict[str, list[dict[str, float]]] = {}
    for rnd in range(a.rounds):
        print(f"-- no-cost embedder, round {rnd + 1} of {a.rounds} ({len(items)} texts)", flush=True)
        for t in a.threads:
            phases: list[tuple[str, Callable[[], dict[str, float]]]] = [
                (f"trivial_job_t{t}", lambda t=t: bench.jobs(items, 1, t, trivial=True))]
            for enc in a.encodings:
                phases.append((f"singles_{enc}_t{t}", lambda t=t, enc=enc: bench.jobs(
                    items, 1, t, provider="fixed", encoding=enc)))
                phases.append((f"batched{a.per_job}_{enc}_t{t}", lambda t=t, enc=enc: bench.jobs(
                    items, a.per_job, t, provider="fixed", encoding=enc)))
            for name, fn in phases:
                r = fn()
                runs.setdefault(name, []).append(r)
                show(name, r)
        rt = bench.configure(a.batch_size, "fixed")
        for enc in a.encodings:
            for per in (1, a.per_job):
                clear(bench.url)
                group = 64 if per == 1 else 1
                cpu = Cpu(bench.url)
                cpu.start()
                how = {"encoding": enc} if enc != "json" else {}
                for g in range(0, len(items), group * per):
                    rt.service.embed_many([EmbedRequest(items[g + i * per:g + (i + 1) * per], provider="fixed", **how)
                                           for i in range(group)])
                spent = cpu.stop()
                name = f"embed_many_{enc}_{group}x{per}"
                r = {"seconds": spent.wall_s, "texts_per_s": len(items) / spent.wall_s,
                     "python_ms_per_text": spent.python_s / len(items) * 1000}
                if spent.postgres_s is not None:
                    r["postgres_ms_per_text"] = spent.postgres_s / len(items) * 1000
                runs.setdefault(name, []).append(r)
                show(name, r)
    out["nocost_runs"] = runs
    out["nocost_median"] = summarise(runs)


def cache_hits(bench: Bench, items: list[str], out: dict[str, Any]) -> None:
    a = bench.args
    bench.use_threads(a.threads[0])
    rt = bench.configure(a.batch_size)
    service = rt.service
    service.embed(items[:a.hits])
    fn_ms = []
    for i in range(a.hits):
        t0 = time.perf_counter()
        r = service.embed([items[i]])
        fn_ms.append((time.perf_counter() - t0) * 1000)
        assert r["cached"] == 1
    job_ms = []
    for i in range(min(a.hits, 100)):
        t0 = time.perf_counter()
        r = bench.actors.embed.send([items[i]]).get_result(block=True, timeout=10_000)
        job_ms.append((time.perf_counter() - t0) * 1000)
        assert r["cached"] == 1
    out["cache_hit_function_ms"] = {"p50": statistics.median(fn_ms), "p95": pct(fn_ms, 95)}
    out["cache_hit_job_ms"] = {"p50": statistics.median(job_ms), "p95": pct(job_ms, 95)}
    print(f"cache hit, plain function: p50 {statistics.median(fn_ms):.2f} ms, p95 {pct(fn_ms, 95):.2f} ms", flush=True)
    print(f"cache hit, whole job (send -> worker -> result): p50 {statistics.median(job_ms):.1f} ms, "
          f"p95 {pct(job_ms, 95):.1f} ms", flush=True)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--per-job", type=int, default=100)
    ap.add_argument("--threads", type=ints, default=[8, 64], help="worker thread counts (comma-separated)")
    ap.add_argument("--batch-size", type=int, default=64, help="llm_batch_size (messages per model call at most)")
    ap.add_argument("--linger-ms", type=float, default=5.0)
    ap.add_argument("--encodings", type=lambda s: s.split(","), default=["json"], help="json and/or f32")
    ap.add_argument("--direct-calls", type=ints, default=[], help="more direct phases: calls of N texts (e.g. 10)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--hits", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="repeat every phase; medians are reported")
    ap.add_argument("--nocost", action="store_true", help="also profile our own cost with a no-cost embedder")
    ap.add_argument("--nocost-texts", type=int, default=4000)
    ap.add_argument("--no-model", action="store_true", help="skip the model phases (with --nocost: profile only)")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    server = os.environ.get("NEURON_TASKS_DATABASE_URL") or embedded.start(None)
    url = fresh_database(server)
    items = texts(args.texts)
    out: dict[str, Any] = {"texts": args.texts, "threads": args.threads, "batch_size": args.batch_size,
                           "device": args.device, "cpus": os.cpu_count()}
    bench = Bench(args, url)
    try:
        if not args.no_model:
            from neuron_tasks.llm.local import load_model

            t0 = time.perf_counter()
            model = load_model(device=args.device, threads=args.torch_threads)
            out["model_load_s"] = time.perf_counter() - t0
            model.encode(items[:64], batch_size=64, normalize_embeddings=True)  # warm-up
            import torch

            out["torch_threads"] = torch.get_num_threads()
            model_rounds(bench, model, items, out)
        if args.nocost:
            nocost_rounds(bench, out)
        if not args.no_model:
            cache_hits(bench, items, out)
        print("medians over rounds (ratios per round against the same round's direct encode; min-max):", flush=True)
        for key in ("model_median", "nocost_median"):
            for phase, m in out.get(key, {}).items():
                noise = "".join(f" {k} {m[k + '_min']:.2f}-{m[k + '_max']:.2f}"
                                for k in ("ratio", "cpu_ratio") if k in m)
                show(phase + noise, m)
    finally:
        if bench.worker is not None:
            bench.worker.stop(timeout=10_000)
        bench.broker.close()
        drop_database(server, url)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
