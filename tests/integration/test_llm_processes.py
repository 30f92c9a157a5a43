"""LLM jobs across processes: results read from another process (PostgresResultBackend), and
4 worker threads in 2 worker processes pacing themselves on a fake provider's rate limit
shared through Postgres. Also the local model (really embeds) and the `llm` CLI."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import psycopg
import pytest

from neuron_tasks import PostgresBroker, db
from neuron_tasks.core.results import PostgresResultBackend
from neuron_tasks.llm.service import LlmService
from neuron_tasks.llm.settings import LlmSettings
from neuron_tasks.testing import truncate
from neuron_tasks.testing.fake_llm import FakeProvider
from tests.conftest import ROOT, worker_env


@pytest.fixture
def llm_db(clean_db: str) -> str:
    truncate(clean_db, "llm")  # clean_db emptied the queue's tables (results among them)
    return clean_db


def declared_actors() -> ModuleType:
    name = "neuron_tasks.llm.actors"
    return importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)


@pytest.mark.slow
def test_results_across_processes_and_shared_rate_limit(broker: PostgresBroker, llm_db: str,
                                                        tmp_path: Path) -> None:
    limit, window_s, jobs = 10, 1.0, 40
    with FakeProvider(limit=limit, window_s=window_s) as fake:
        log = (tmp_path / "workers.log").open("wb")
        env = worker_env(llm_db, llm_provider="http", llm_http_base_url=fake.base_url, llm_timeout_ms="5000")
        proc = subprocess.Popen(
            [sys.executable, "-m", "neuron_tasks.cli", "worker", "neuron_tasks.llm.actors", "-p", "2", "-t", "2"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        try:
            actors = declared_actors()  # only to build messages; this process runs no worker
            started = time.monotonic()
            messages = broker.enqueue_many([actors.complete.message(f"job {i}", cache=False) for i in range(jobs)])
            backend = PostgresResultBackend(llm_db)  # a reader of its own, as another app would be
            try:
                results = [backend.get_result(m, block=True, timeout=60_000) for m in messages]
            finally:
                backend.close()
            elapsed = time.monotonic() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            log.close()
        assert [r["text"].endswith(f"job {i}") for i, r in enumerate(results)] == [True] * jobs
        throttled = fake.count(status=429)
        print(f"{jobs} calls in {elapsed:.1f}s, limit {limit}/{window_s:.0f}s: {throttled} answered 429")
        assert throttled <= 1, (throttled, (tmp_path / "workers.log").read_text()[-3000:])
        assert elapsed >= (jobs / limit - 1) * window_s * 0.9  # the workers waited for the windows
        pids = {int(p) for (p,) in psycopg.connect(llm_db).execute(
            "SELECT DISTINCT pid FROM neuron_tasks.workers").fetchall()}
        assert len(pids) >= 2 and os.getpid() not in pids


def test_local_model_really_embeds(llm_db: str) -> None:
    pool = db.make_pool(llm_db, max_size=2)
    try:
        service = LlmService(pool, LlmSettings(llm_provider="local"))
        out = service.embed(["A cat sits on the mat.", "A kitten is sitting on a rug.",
                             "Quarterly tax filings are due in April."], tenant="acme")
        assert out["dims"] == 384 and out["model"] == "local:all-MiniLM-L6-v2"
        import numpy as np

        v = np.asarray(out["embeddings"])
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
        assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # similar sentences are closer than unrelated ones
        ranked = service.rerank("where is the cat?", ["tax deadlines", "the cat is on the mat"])
        assert ranked["results"][0]["index"] == 1 and "bi-encoder" in ranked["method"]
        [(tokens, estimated)] = psycopg.connect(llm_db).execute(
            "SELECT tokens, estimated FROM neuron_tasks.llm_usage WHERE operation = 'embed'").fetchall()
        assert tokens > 0 and estimated
    finally:
        pool.close()


def cli(url: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "neuron_tasks.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "NEURON_TASKS_DATABASE_URL": url}, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_llm_cli_jobs_usage_providers_and_cache(llm_db: str) -> None:
    with psycopg.connect(llm_db, autocommit=True) as conn:
        conn.execute("""INSERT INTO neuron_tasks.llm_cache (key, operation, model, input, value, bytes, expires_at)
                        VALUES ('\\x01', 'embed', 'local:m', '{"text": "a"}', '\\x00', 1, now() + interval '1h')""")
        conn.execute("INSERT INTO neuron_tasks.llm_usage (tenant, tokens, operation) VALUES ('acme', 7, 'embed')")
    stats = json.loads(cli(llm_db, "llm", "cache", "stats", "--json"))
    assert [(s["operation"], s["entries"]) for s in stats] == [("embed", 1)]
    assert json.loads(cli(llm_db, "llm", "usage", "--json"))[0]["tokens"] == 7
    assert json.loads(cli(llm_db, "llm", "jobs", "--json")) == {"status": [], "failed": []}
    assert json.loads(cli(llm_db, "llm", "providers", "--json")) == []
    assert json.loads(cli(llm_db, "llm", "cache", "clear", "--yes", "--json")) == {"deleted": 1}
    assert "expired 0" in cli(llm_db, "llm", "cache", "rotate")


