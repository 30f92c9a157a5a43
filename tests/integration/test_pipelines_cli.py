"""`neuron-tasks pipeline ...` in-process (typer's CliRunner) on a real Postgres; `run` uses the
default embedder: the local all-MiniLM-L6-v2 model (offline, 384 dims) on three rows."""

from __future__ import annotations

import json

import psycopg
import pytest
from typer.testing import CliRunner

from neuron_tasks import cli_support
from neuron_tasks.cli import app


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
    code, out = invoke("update", "pl_cli", "--mode", "disabled", "--json")
    assert code == 0 and json.loads(out)["auto_processing"] == "disabled"
    code, out = invoke("update", "pl_cli", "--sync-interval", "3 days")
    assert code == 1 and "cannot update" in out
    code, out = invoke("drop", "pl_cli", "--drop-destination")
    assert code == 0
    code, out = invoke("drop", "pl_cli")
    assert code == 1
