"""The LLM phase of `neuron-tasks demo`: embedding jobs on the local model, completions
against NEURON_TASKS_LLM_HTTP_BASE_URL or, when none is set, a local FAKE provider."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import dramatiq
from psycopg.rows import dict_row, scalar_row
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from neuron_tasks import db
from neuron_tasks.config import Settings
from neuron_tasks.core.broker import PostgresBroker
from neuron_tasks.sql import q

TEXTS = [f"{subject} {verb} {thing}" for subject in ("The cat", "A developer", "Our database", "The queue")
         for verb in ("likes", "indexes", "watches", "sorts", "ships")
         for thing in ("fresh fish", "vector embeddings", "late-night deploys", "sunny windows", "big batches")]


def run(url: str, settings: Settings, console: Console) -> bool:
    from neuron_tasks.testing.fake_llm import FAKE_NOTE, FakeProvider

    real = os.environ.get("NEURON_TASKS_LLM_HTTP_BASE_URL")
    fake = None if real else FakeProvider().start()
    base = real or (fake.base_url if fake else "")
    label = "configured endpoint " + db.redact(base) if real else f"LOCAL {FAKE_NOTE} at {base}"
    console.print(f"embeddings: local model all-MiniLM-L6-v2 (offline); completions: [bold]{label}[/]")
    log_path = os.path.join(tempfile.gettempdir(), f"neuron-tasks-demo-llm-{os.getpid()}.log")
    env = {**os.environ, db.URL_ENV: url, "NEURON_TASKS_LLM_HTTP_BASE_URL": base}
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "neuron_tasks.cli", "worker", "-p", "1", "-t", "8"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    broker = PostgresBroker(url, settings=settings)
    dramatiq.set_broker(broker)
    from neuron_tasks.llm import actors as actors

    with broker.pool.connection() as conn, conn.cursor(row_factory=scalar_row) as cur:
        since = cur.execute(q("now")).fetchone()  # the job view shows this run's jobs only
    ok = True
    try:
        ok = _jobs(actors, broker, console, fake is not None, since)
    except Exception as exc:
        console.print(f"[red]LLM demo failed: {exc}[/] (worker log: {log_path})")
        ok = False
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        broker.close()
        if fake is not None:
            fake.stop()
    return ok


def _wait(messages: list[Any], progress: Progress, task: Any, timeout_s: float) -> list[Any]:
    out = []
    for m in messages:
        out.append(m.get_result(block=True, timeout=int(timeout_s * 1000)))
        progress.advance(task)
    return out


def _jobs(actors: Any, broker: PostgresBroker, console: Console, is_fake: bool, since: Any) -> bool:
    cols = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn())
    timings = Table(title="LLM jobs")
    for c in ("jobs", "what", "seconds", "texts/s"):
        timings.add_column(c)
    with Progress(*cols, console=console) as progress:
        t = progress.add_task("worker loads the local model (once per process)", total=1)
        _wait([actors.embed.send(["warm-up"], cache=False)], progress, t, 180)
        singles = [actors.embed.send_with_options(args=([text],), tenant="demo") for text in TEXTS]
        started = time.perf_counter()
        t = progress.add_task("100 single-text embed jobs (batched across messages)", total=len(singles))
        results = _wait(singles, progress, t, 120)
        cached = sum(r["cached"] for r in results)  # a cache filled by an earlier run answers these
        timings.add_row(str(len(singles)), "embed, 1 text each" + (f", {cached} from cache" if cached else ""),
                        f"{time.perf_counter() - started:.2f}",
                        f"{len(singles) / (time.perf_counter() - started):.0f}")
        started = time.perf_counter()
        t = progress.add_task("1 embed job of the same 100 texts (cache hits)", total=1)
        [again] = _wait([actors.embed.send(TEXTS)], progress, t, 60)
        timings.add_row("1", f"embed, 100 texts, {again['cached']} from cache",
                        f"{time.perf_counter() - started:.2f}", f"{100 / (time.perf_counter() - started):.0f}")
        t = progress.add_task("completions (the last one repeats the first: a cache hit) + a rerank", total=4)

        def ask(prompt: str) -> Any:
            return actors.complete.send_with_options(kwargs={"prompt": prompt, "provider": "http"}, tenant="demo")

        done = _wait([ask("Say hello to the queue."), ask("What is SKIP LOCKED?"),
                      actors.rerank.send("cats and fish", TEXTS[:25], top_n=3)], progress, t, 60)
        done.insert(2, _wait([ask("Say hello to the queue.")], progress, t, 60)[0])
    console.print(timings)
    dims = ", ".join(str(d) for d in sorted({r["dims"] for r in results}))
    how = "the batcher merged concurrent messages per model call" if cached < len(results) else "all from the cache"
    console.print(f"embeddings: {len(results)} x {dims} dimensions; {how}", highlight=False)
    tag = "[bold yellow]FAKE PROVIDER[/] " if is_fake else ""
    for r in done[:3]:
        console.print(f"{tag}completion ({r['model']}, cached={r['cached']}): {r['text'][:90]}", highlight=False)
    rr = done[3]
    console.print(f"rerank ({rr['method']}): " + "; ".join(f"{x['document']} ({x['score']:.2f})"
                                                          for x in rr["results"]), highlight=False)
    with broker.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        status = cur.execute(q("llm_job_status_since"), {"since": since}).fetchall()
    table = Table(title="LLM jobs of this run (neuron_tasks.llm_jobs)")
    for c in ("operation", "status", "count", "avg seconds"):
        table.add_column(c)
    for row in status:
        avg = row["avg_seconds"]
        table.add_row(row["operation"], row["status"], str(row["count"]), "-" if avg is None else f"{avg:.2f}")
    console.print(table)
    console.print("Try: neuron-tasks llm jobs | llm usage | llm providers | llm cache stats")
    return all(r["dims"] == 384 for r in results) and again["cached"] == 100 and done[2]["cached"]
