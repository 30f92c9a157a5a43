"""`neuron-tasks pipeline ...` in-process (typer's CliRunner) on a real Postgres; `run` uses the
default embedder: the local all-MiniLM-L6-v2 model (offline, 384 dims) on three rows."""

from __future__ import annotations

import json

import psycopg
import pytest
from typer.testing import CliRunner

from neuron_tasks import commandline as cli_support
from neuron_tasks.cli.app import app


@pytest.fixture
def cli_db(clean_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT name FROM neuron_tasks.pipelines").fetchall():
            conn.execute("SELECT neuron_tasks.drop_pipeline(%s, true)", [name])
        conn.execute("DROP TABLE IF EXISTS public.pl_cli CASCADE")
        conn.execute("CREATE TABLE public.pl_cli (id bigint PRIMARY KEY, body varchar(200))")
        conn.execute("INSERT INTO pl_cli VALUES (1, 'the cat sat'), (2, 'dogs bark'), (3, 'stock markets')")
    monkeypatch.setenv("NEURON_TASKS_DATABASE_URL", clean_db)
    monkeypatch.setattr(cli_support.state, "settings", None)
    monkeypatch.setattr(cli_support.state, "database_url", None)
    return clean_db


def invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["pipeline", *args])
    return res.exit_code, res.stdout if res.exit_code == 0 else res.output


def test_pipeline_commands(cli_db: str) -> None:
    code, out = invoke("create", "pl_cli", "--source", "pl_cli", "--key", "id", "--data", "body",
                       "--sync-interval", "1 minute", "--batch-size", "2", "--json")
    assert code == 0, out
    assert json.loads(out)["destination"] == "public.pl_cli_embeddings"
    code, out = invoke("create", "pl_bad", "--source", "pl_cli", "--key", "id", "--data", "nope")
    assert code == 1 and "has no data column" in out
    code, out = invoke("list", "--json")
    assert code == 0 and json.loads(out)[0]["status"] == "Stale"
    code, out = invoke("run", "pl_cli", "--json")
    assert code == 0, out
    assert json.loads(out)["embedded"] == 3 and json.loads(out)["batches"] == 2
    with psycopg.connect(cli_db) as conn:
        dims = conn.execute("SELECT DISTINCT array_length(embedding, 1) FROM pl_cli_embeddings").fetchall()
    assert dims == [(384,)]
    code, out = invoke("status", "pl_cli")
    assert code == 0 and "UpToDate" in out
    code, out = invoke("search", "pl_cli", "a kitten resting", "-k", "2", "--json")
    assert code == 0, out
    hits = json.loads(out)
    assert hits[0]["key"] == "1" and hits[0]["text"] == "the cat sat" and len(hits) == 2
    code, out = invoke("update", "pl_cli", "--mode", "disabled", "--json")
    assert code == 0 and json.loads(out)["auto_processing"] == "disabled"
    code, out = invoke("update", "pl_cli", "--sync-interval", "3 days")
    assert code == 1 and "cannot update" in out
    code, out = invoke("drop", "pl_cli", "--drop-destination", "--yes")
    assert code == 0
    code, out = invoke("drop", "pl_cli", "--yes")
    assert code == 1


def test_index_destination_run_and_search(cli_db: str) -> None:
    """The real local model into a vector index: searchable by meaning right after `run`."""
    code, out = invoke("create", "pl_ix", "--source", "pl_cli", "--key", "id", "--data", "body",
                       "--destination", "index:pl_cli_idx", "--json")
    assert code == 0, out
    assert json.loads(out)["destination"] == "index:pl_cli_idx"
    code, out = invoke("search", "pl_ix", "anything")
    assert code == 0 and "key" in out  # nothing synced yet: an empty table, no error
    code, out = invoke("run", "pl_ix", "--json")
    assert code == 0 and json.loads(out)["embedded"] == 3, out
    code, out = invoke("search", "pl_ix", "puppies barking loudly", "-k", "1", "--json")
    assert code == 0, out
    assert json.loads(out) == [{"key": "2", "score": pytest.approx(json.loads(out)[0]["score"]), "text": "dogs bark"}]
    assert json.loads(out)[0]["score"] > 0.3
    code, out = invoke("list", "--json")
    row = next(r for r in json.loads(out) if r["pipeline"] == "pl_ix")
    assert (row["count_destination_records"], row["status"]) == (3, "UpToDate")
    code, out = invoke("create", "pl_ix2", "--source", "pl_cli", "--key", "id", "--data", "body",
                       "--destination", "index:pl_cli_idx")
    assert code == 1 and "belongs to another pipeline" in out
    assert invoke("drop", "pl_ix", "--drop-destination", "--yes")[0] == 0
    with psycopg.connect(cli_db) as conn:
        assert conn.execute("SELECT count(*) FROM neuron_tasks.vector_indexes WHERE name = 'pl_cli_idx'"
                            ).fetchone()[0] == 0


def test_live_mode_through_a_worker_and_the_llm_service(cli_db: str, broker: object,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Live mode end to end: a committed write enqueues the sync; a worker runs it through the LLM
    service against the fake OpenAI-compatible provider (neuron_tasks.testing.fake_llm)."""
    import importlib
    import sys
    import time

    import dramatiq

    from neuron_tasks import pipelines
    from neuron_tasks.testing.fake_llm import FakeProvider

    name = "neuron_tasks.pipelines.actors"
    importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
    with FakeProvider() as fake, psycopg.connect(cli_db, autocommit=True) as conn:
        monkeypatch.setenv("NEURON_TASKS_LLM_HTTP_BASE_URL", fake.base_url)
        pipelines.create_pipeline(cli_db, "pl_cli", source="pl_cli", key="id", data="body", mode="live",
                                  step="embed:http:fake-embed")
        broker.emit_after("process_boot")  # type: ignore[attr-defined]
        w = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)  # type: ignore[arg-type]
        w.start()
        try:
            broker.join("pipelines", timeout=20_000)  # type: ignore[attr-defined]
            t0 = time.monotonic()
            with conn.transaction():
                conn.execute("INSERT INTO pl_cli VALUES (4, 'a new row')")
                conn.execute("DELETE FROM pl_cli WHERE id = 1")
            broker.join("pipelines", timeout=20_000)  # type: ignore[attr-defined]
            assert time.monotonic() - t0 < 20
        finally:
            w.stop(timeout=5000)
        got = dict(conn.execute("SELECT key, source_hash FROM pl_cli_embeddings").fetchall())
        want = dict(conn.execute("SELECT id::text, md5(body) FROM pl_cli").fetchall())
        assert got == want and sorted(got) == ["2", "3", "4"]
        assert fake.count("/embeddings") >= 2


def test_folder_pipeline_commands(cli_db: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from neuron_tasks.testing.fake_llm import FakeProvider

    folder = Path(str(tmp_path))
    (folder / "a.txt").write_text("some words " * 30)
    with psycopg.connect(cli_db, autocommit=True) as conn:
        conn.execute("SELECT neuron_tasks.drop_pipeline('pl_cli', true)")
        conn.execute("DELETE FROM neuron_tasks.pipeline_volumes")
        conn.execute("DROP TABLE IF EXISTS pl_fold_embeddings")
    with FakeProvider() as fake:
        monkeypatch.setenv("NEURON_TASKS_LLM_HTTP_BASE_URL", fake.base_url)
        code, out = invoke("create", "pl_fold", "--source", f"folder:{folder}", "--chunk-size", "100",
                           "--overlap", "10", "--step", "embed:http:fake-embed")
        assert code == 0, out
        code, out = invoke("run", "pl_fold", "--json")
        assert code == 0, out
        assert json.loads(out)["chunks"] == 4 and json.loads(out)["new"] == 1
    code, out = invoke("list", "--json")
    assert [r["volume_scans_completed"] for r in json.loads(out)] == [1]
    code, out = invoke("status", "pl_fold")
    assert code == 0 and "UpToDate" in out
    code, out = invoke("drop", "pl_fold", "--drop-destination", "--yes")
    assert code == 0


def test_demo_phase(cli_db: str) -> None:
    import io

    from rich.console import Console

    from neuron_tasks.pipelines.commands import demo_phase

    out = io.StringIO()
    assert demo_phase(cli_db, None, Console(file=out, width=200)), out.getvalue()
    assert "backfill: 10 rows embedded" in out.getvalue()
