"""Folder (volume) pipelines on a real Postgres, with the deterministic test embedder
(sha256 -> 8 floats, `neuron_tasks.testing.fake_llm.fake_vector`, in-process)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from neuron_tasks import pipelines
from neuron_tasks.db import make_pool
from neuron_tasks.testing.fake_llm import fake_vector


def embedder(texts: list[str]) -> list[list[float]]:
    return [fake_vector(t) for t in texts]


@pytest.fixture
def vol_db(clean_db: str) -> Iterator[str]:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT name FROM neuron_tasks.pipeline_volumes").fetchall():
            pipelines.drop_volume_pipeline(clean_db, name, drop_destination=True)
    yield clean_db


@pytest.fixture
def pool(vol_db: str) -> Iterator[ConnectionPool]:
    p = make_pool(vol_db, max_size=2, name="test_pipelines_volume")
    yield p
    p.close()


def test_chunking() -> None:
    assert pipelines.chunk_text("abcdefghij", 4, 1) == ["abcd", "defg", "ghij"]
    assert pipelines.chunk_text("abc", 4, 1) == ["abc"]
    assert pipelines.chunk_text("  ", 4, 1) == []


def test_folder_picks_up_new_changed_and_removed_files(vol_db: str, pool: ConnectionPool, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha " * 50)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("beta text")
    (tmp_path / "ignored.bin").write_text("not matched")
    v = pipelines.create_volume_pipeline(vol_db, "pl_vol", folder=tmp_path, chunk_size=100, chunk_overlap=20)
    assert v["destination"] == "pl_vol_embeddings"
    assert pipelines.list_pipelines(vol_db, "pl_vol")[0]["status"] == "Stale"
    first = pipelines.scan_volume(pool, "pl_vol", embedder=embedder)
    assert (first["new"], first["chunks"]) == (2, 4 + 1)  # 300 chars in windows of 100 every 80 -> 4
    with psycopg.connect(vol_db) as conn:
        keys = sorted(k for (k,) in conn.execute("SELECT key FROM pl_vol_embeddings").fetchall())
        assert keys == ["a.txt#0", "a.txt#1", "a.txt#2", "a.txt#3", "sub/b.txt#0"]
    # unchanged: nothing embedded; a touched file with the same content is not re-embedded
    os.utime(tmp_path / "sub" / "b.txt", (1, 1))
    again = pipelines.scan_volume(pool, "pl_vol", embedder=embedder)
    assert (again["new"], again["changed"], again["unchanged"], again["chunks"]) == (0, 0, 2, 0)
    # new, changed, removed
    (tmp_path / "c.txt").write_text("gamma")
    (tmp_path / "a.txt").write_text("alpha, shorter now")
    os.utime(tmp_path / "a.txt", (2, 2))
    (tmp_path / "sub" / "b.txt").unlink()
    third = pipelines.scan_volume(pool, "pl_vol", embedder=embedder)
    assert (third["new"], third["changed"], third["removed"]) == (1, 1, 1)
    with psycopg.connect(vol_db) as conn:
        rows = dict(conn.execute("SELECT key, source_hash FROM pl_vol_embeddings").fetchall())
    import hashlib
    assert rows == {"a.txt#0": hashlib.md5(b"alpha, shorter now").hexdigest(),
                    "c.txt#0": hashlib.md5(b"gamma").hexdigest()}
    m = pipelines.list_pipelines(vol_db, "pl_vol")[0]
    assert (m["status"], m["volume_scans_completed"], m["count_source_records"],
            m["count_destination_records"]) == ("UpToDate", 3, 2, 2)


def test_folder_bad_input_creates_nothing(vol_db: str, tmp_path: Path) -> None:
    with pytest.raises(pipelines.PipelineError, match="does not exist"):
        pipelines.create_volume_pipeline(vol_db, "pl_vol", folder=tmp_path / "nope")
    with pytest.raises(pipelines.PipelineError, match="overlap"):
        pipelines.create_volume_pipeline(vol_db, "pl_vol", folder=tmp_path, chunk_size=100, chunk_overlap=100)
    with pytest.raises(pipelines.PipelineError, match="between 1 second"):
        pipelines.create_volume_pipeline(vol_db, "pl_vol", folder=tmp_path, sync_interval="3 days")
    with psycopg.connect(vol_db) as conn:
        assert conn.execute("SELECT count(*) FROM neuron_tasks.pipeline_volumes").fetchone()[0] == 0
        assert conn.execute("SELECT to_regclass('pl_vol_embeddings')").fetchone()[0] is None


def test_sync_job_and_tick_handle_folders(vol_db: str, pool: ConnectionPool, tmp_path: Path, broker: object) -> None:
    from neuron_tasks.pipelines.actors import run_pipeline_sync, run_pipeline_tick

    (tmp_path / "a.txt").write_text("hello")
    pipelines.create_volume_pipeline(vol_db, "pl_vol", folder=tmp_path, sync_interval="1 hour")
    assert run_pipeline_tick(vol_db) == ["pl_vol"]
    assert run_pipeline_tick(vol_db) == []  # one waiting already
    assert run_pipeline_sync("pl_vol", pool, embedder)["new"] == 1
    with psycopg.connect(vol_db, autocommit=True) as conn:
        conn.execute("DELETE FROM neuron_tasks.messages")
    assert run_pipeline_tick(vol_db) == []  # scanned less than an hour ago


def test_scheduler_tick_enqueues_folder_scans_and_table_syncs(vol_db: str, tmp_path: Path) -> None:
    """The scheduler leader runs the tick itself (a builtin): a folder-only setup is scanned too."""
    from neuron_tasks.scheduler.node import builtin

    (tmp_path / "a.txt").write_text("hello")
    pipelines.create_volume_pipeline(vol_db, "pl_vol", folder=tmp_path, sync_interval="1 hour")
    with psycopg.connect(vol_db, autocommit=True) as conn:
        assert builtin(conn, "neuron_tasks.pipelines.manage:tick") == "enqueued syncs: pl_vol"
        assert builtin(conn, "neuron_tasks.pipelines.manage:tick") == "nothing due"
        conn.execute("DROP TABLE IF EXISTS public.pl_tick")
        conn.execute("CREATE TABLE public.pl_tick (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO pl_tick VALUES (1, 'x')")
        pipelines.create_pipeline(vol_db, "pl_tick", source="pl_tick", key="id", data="body")
        assert builtin(conn, "neuron_tasks.pipelines.manage:tick") == "enqueued syncs: pl_tick"
        args = sorted(r[0] for r in conn.execute(
            "SELECT convert_from(payload, 'UTF8')::jsonb -> 'args' ->> 0 FROM neuron_tasks.messages "
            "WHERE actor_name = 'neuron_tasks.pipeline_sync'").fetchall())
        assert args == ["pl_tick", "pl_vol"]
        pipelines.drop_pipeline(vol_db, "pl_tick", drop_destination=True)
        conn.execute("DROP TABLE public.pl_tick")
