"""Index maintenance on a real PostgreSQL: tombstone ratio, forced rebuild restores recall, the
maintenance window, a crash mid-rebuild, search during a rebuild in another process, VACUUM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest

from neuron_tasks.testing import truncate
from neuron_tasks.vectors import Vectors, VectorSettings
from neuron_tasks.vectors.defrag import (
    adopt,
    defrag_index,
    fragmented,
    graph_recall,
    in_window,
    measure,
    next_window,
    vacuum,
)
from neuron_tasks.vectors.defrag_settings import DefragSettings
from neuron_tasks.vectors.graph import Graph

pytest.importorskip("hnswlib")

NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)       # outside 02:00-04:00 UTC
NIGHT = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)       # inside it


@pytest.fixture
def ddb(clean_db: str) -> str:
    truncate(clean_db, "vectors")
    return clean_db


def make(url: str) -> Vectors:
    return Vectors(url, settings=VectorSettings(database_url=url, vectors_sync_s=0.0, vectors_sample_rate=0.0,
                                                vectors_metrics_flush_s=0.1))  # type: ignore[arg-type]


def dsettings(url: str, **kw: object) -> DefragSettings:
    opts = {"database_url": url, "defrag_tombstone_grace_s": 0.0, "defrag_probe_queries": 100, **kw}
    return DefragSettings(**opts)  # type: ignore[arg-type]


@pytest.fixture
def vec(ddb: str) -> Iterator[Vectors]:
    v = make(ddb)
    yield v
    v.close()


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim)) * 4
    return (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def churned(vec: Vectors, name: str = "docs", n: int = 3000, dim: int = 16, ef: int = 10) -> np.ndarray:
    x = clustered(n, dim)
    vec.create_index(name, dim=dim, space="l2", m=8, ef_construction=60, ef_search=ef)
    vec.add(name, range(n), x)
    vec.delete(name, range(0, n, 2))  # every second item, then every sixth: 2/3 deleted
    vec.delete(name, range(1, n, 6))
    return x


def graph_version(url: str, name: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute("SELECT graph_version FROM neuron_tasks.vector_indexes WHERE name = %s",
                                (name,)).fetchone()[0])  # type: ignore[index]


def test_window_arithmetic() -> None:
    assert in_window(NIGHT, "02:00-04:00", "UTC") and not in_window(NOON, "02:00-04:00", "UTC")
    assert in_window(datetime(2026, 1, 1, 23, 30, tzinfo=UTC), "23:00-01:00", "UTC")
    assert next_window(NOON, "02:00-04:00", "UTC") == datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    # 02:00 in New York (EST, UTC-5) is 07:00 UTC
    assert next_window(NOON, "02:00-04:00", "America/New_York") == datetime(2026, 11, 24, 7, 0, tzinfo=UTC)


def test_deletes_raise_the_tombstone_ratio(vec: Vectors, ddb: str) -> None:
    s = dsettings(ddb)
    vec.create_index("docs", dim=16, space="l2")
    vec.add("docs", range(2000), clustered(2000, 16))
    m0 = measure(vec, "docs", s, now=NOON)
    assert (m0.live, m0.deleted, m0.tombstone_ratio) == (2000, 0, 0.0)
    assert m0.recall is not None and m0.recall > 0.8
    vec.delete("docs", range(800))
    m1 = measure(vec, "docs", s, now=NOON)
    assert (m1.live, m1.deleted, m1.tombstone_rows) == (1200, 800, 800)
    assert m1.tombstone_ratio == pytest.approx(0.4)
    assert not m1.in_window and m1.next_window == datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    with psycopg.connect(ddb) as conn:
        row = conn.execute("SELECT deleted_count, tombstone_ratio FROM neuron_tasks.index_maintenance").fetchone()
    assert row == (800, pytest.approx(0.4))


def test_rebuild_outside_the_window_is_refused_unless_forced(vec: Vectors, ddb: str) -> None:
    churned(vec)
    s = dsettings(ddb)
    v0 = graph_version(ddb, "docs")
    r = defrag_index(vec, "docs", s, now=NOON)
    assert r["action"] == "refused" and "window" in r["reason"]
    assert graph_version(ddb, "docs") == v0 and vec.state("docs").graph.tombstones
    r = defrag_index(vec, "docs", s, now=NIGHT)  # inside the window: rebuilt without --now
    assert r["action"] == "rebuild" and graph_version(ddb, "docs") == v0 + 1


def test_forced_defrag_restores_recall_and_prunes(vec: Vectors, ddb: str) -> None:
    churned(vec)
    s = dsettings(ddb)
    before = measure(vec, "docs", s, now=NOON)
    assert before.tombstone_ratio > 0.5
    r = defrag_index(vec, "docs", s, force=True, now=NOON)
    assert r["action"] == "rebuild" and r["pruned_rows"] == before.tombstone_rows
    after = measure(vec, "docs", s, now=NOON)
    assert (after.live, after.deleted, after.elements, after.tombstone_rows) == (before.live, 0, before.live, 0)
    # the rebuilt graph answers like a fresh build of the live set (same order, same hnswlib seed)
    st = vec.state("docs")
    ids = sorted(st.graph.live)
    fresh = Graph.new("l2", 16, 8, 60, capacity=len(ids) + 1024)
    fresh.upsert(ids, st.graph.vectors(ids))
    from neuron_tasks.vectors.defrag import probe_queries

    probes = probe_queries("docs", fresh, 100)
    assert after.recall is not None and before.recall is not None
    assert after.recall >= graph_recall(fresh, probes, 10, 10) - 0.01
    assert after.recall >= before.recall - 0.01
    assert after.memory_ratio <= 1.1
    # another process loads the rebuilt snapshot; the pruned deletes stay deleted
    other = make(ddb)
    try:
        assert other.state("docs").graph.counts()["tombstones"] == 0
        hits = other.search("docs", clustered(1, 16, seed=5)[0], k=10, record=False).ids
        assert len(hits) == 10 and all(i in st.graph.live for i in hits)
    finally:
        other.close()


CHILD = textwrap.dedent("""
    import os, sys
    from neuron_tasks.vectors import Vectors, VectorSettings
    from neuron_tasks.vectors.defrag import defrag_index
    from neuron_tasks.vectors.defrag_settings import DefragSettings
    url, crash = sys.argv[1], sys.argv[2] == "crash"
    def hook(phase, done, total):
        if crash and phase == "build" and done > 0:
            os._exit(3)
    v = Vectors(url, settings=VectorSettings(database_url=url))
    r = defrag_index(v, "docs", DefragSettings(database_url=url, defrag_build_batch=500,
                     defrag_tombstone_grace_s=0), force=True, on_progress=hook)
    print(r["action"])
""")


def child(url: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, url, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "NEURON_TASKS_DATABASE_URL": url})


def test_a_crash_mid_rebuild_leaves_a_working_index(vec: Vectors, ddb: str) -> None:
    x = churned(vec)
    vec.save("docs")
    v0 = graph_version(ddb, "docs")
    proc = child(ddb, "crash")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    with psycopg.connect(ddb) as conn:
        run = conn.execute("SELECT phase, finished_at, rows_done FROM neuron_tasks.defrag_runs").fetchone()
    assert run is not None and run[0] == "build" and run[1] is None and run[2] > 0
    assert graph_version(ddb, "docs") == v0
    fresh = make(ddb)
    try:
        res = fresh.search("docs", x[5], k=10, record=False)
        assert len(res.ids) == 10 and fresh.state("docs").graph.live.issuperset(res.ids)
        r = defrag_index(fresh, "docs", dsettings(ddb), force=True, now=NOON)  # restarts cleanly
        assert r["action"] == "rebuild" and r["abandoned_runs"] == [1]
        assert graph_version(ddb, "docs") == v0 + 1
    finally:
        fresh.close()


def test_search_keeps_answering_during_a_rebuild_in_another_process(vec: Vectors, ddb: str) -> None:
    x = churned(vec, n=20000, ef=20)
    vec.save("docs")
    searcher = make(ddb)
    try:
        searcher.state("docs")
        assert not adopt(searcher, "docs")
        proc = child(ddb, "rebuild")
        queries, failures, short, n = clustered(200, 16, seed=9), 0, 0, 0
        while proc.poll() is None or n < 50:
            try:
                res = searcher.search("docs", queries[n % 200], k=10, record=False)
                short += len(res.ids) < 10
            except Exception:
                failures += 1
            n += 1
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "rebuild", err
        print(f"searches during the rebuild: {n}, failed {failures}, short {short}")
        assert (failures, short) == (0, 0) and n >= 50
        # The searcher swaps to the rebuilt graph by itself, on a search after its next refresh.
        time.sleep(searcher.settings.vectors_sync_s + 0.2)
        searcher.search("docs", queries[0], k=10, record=False)
        published = int(searcher.info("docs")["graph_version"])
        assert searcher.state("docs").graph_version == published >= 1
        assert searcher.state("docs").graph.counts()["tombstones"] == 0
        assert len(searcher.search("docs", x[3], k=10, record=False).ids) == 10
    finally:
        searcher.close()


def test_vacuum_reports_tables_past_the_dead_ratio(vec: Vectors, ddb: str) -> None:
    vec.create_index("docs", dim=4, space="l2")
    vec.add("docs", range(3000), clustered(3000, 4))
    with psycopg.connect(ddb, autocommit=True) as conn:
        conn.execute("UPDATE neuron_tasks.vector_items SET updated_at = now()")  # 3,000 dead tuples
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")
    done = vacuum(ddb, dsettings(ddb, defrag_vacuum_dead_ratio=0.3, defrag_vacuum_min_dead=1000))
    tables = {row["table"]: row for row in done}
    assert "vector_items" in tables and tables["vector_items"]["dead_tuples"] >= 1000
    assert "vector_indexes" not in tables  # below min_dead


def test_cli_index_defrag_now_and_status(vec: Vectors, ddb: str) -> None:
    churned(vec, n=1500)
    vec.save("docs")
    env = {**os.environ, "NEURON_TASKS_DATABASE_URL": ddb, "NEURON_TASKS_DEFRAG_MAINTENANCE_WINDOW": "00:00-00:00"}
    run = [sys.executable, "-m", "neuron_tasks.cli"]
    out = subprocess.run([*run, "index", "defrag", "docs", "--json"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr

    assert json.loads(out.stdout)["action"] == "refused"
    out = subprocess.run([*run, "index", "defrag", "docs", "--now"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and "action=rebuild" in out.stdout, out.stderr
    out = subprocess.run([*run, "defrag", "status", "docs", "--json"], capture_output=True, text=True, env=env,
                         timeout=120)
    status = json.loads(out.stdout)
    assert [r["action"] for r in status["runs"]] == ["rebuild", "refused"]
    assert status["indexes"][0]["deleted_count"] == 0
    out = subprocess.run([*run, "index", "stats", "docs", "--json"], capture_output=True, text=True, env=env,
                         timeout=120)
    runs = json.loads(out.stdout)["defrag_runs"]  # `index stats` shows the runs' phase and progress too
    assert runs[0]["phase"] == "done" and runs[0]["rows_done"] == runs[0]["rows_total"] > 0


@pytest.fixture
def defrag_actors(broker: object, ddb: str) -> Iterator[object]:
    """neuron_tasks.vectors.defrag_actors declared on this test's broker, its client on the test database."""
    import importlib

    from neuron_tasks import vectors

    name = "neuron_tasks.vectors.defrag_actors"
    module = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
    vectors.set_client(make(ddb))
    yield module
    vectors.client().close()
    vectors.set_client(None)


def test_defrag_actor_runs_on_a_worker(vec: Vectors, defrag_actors: object, worker: object, broker: object,
                                       ddb: str) -> None:
    churned(vec, n=1500)
    msg = defrag_actors.defrag_indexes.send(force=True)  # type: ignore[attr-defined]
    broker.join(msg.queue_name, timeout=60_000)  # type: ignore[attr-defined]
    with psycopg.connect(ddb) as conn:
        runs = conn.execute("SELECT action, phase FROM neuron_tasks.defrag_runs").fetchall()
    assert runs == [("rebuild", "done")]
    assert graph_version(ddb, "docs") == 2


def test_demo_phase_churns_and_repairs(ddb: str) -> None:
    from rich.console import Console

    from neuron_tasks.vectors.defrag_commands import demo_phase

    console = Console(record=True, width=160)
    assert demo_phase(ddb, None, console)
    text = console.export_text()
    assert "refused" in text and "after churn" in text and "0 failed, 0 short" in text


def test_recall_drift_is_measured_against_a_baseline_at_the_same_ef(vec: Vectors, ddb: str) -> None:
    s = dsettings(ddb)
    vec.create_index("docs", dim=16, space="l2", ef_search=40)
    vec.add("docs", range(2000), clustered(2000, 16))
    m0 = measure(vec, "docs", s, now=NOON)
    assert m0.baseline_recall == m0.recall and m0.recall_drift == 0
    with psycopg.connect(ddb) as conn:  # a recall 0.05 better once, at this ef
        conn.execute("UPDATE neuron_tasks.index_maintenance SET baseline_recall = recall + 0.05")
    m1 = measure(vec, "docs", s, now=NOON)
    assert m1.recall_drift == pytest.approx(0.05) and fragmented(m1, s)
    with psycopg.connect(ddb) as conn:  # the tuner publishes another ef: a new baseline, no drift
        conn.execute("UPDATE neuron_tasks.vector_indexes SET ef_search = 20 WHERE name = 'docs'")
    m2 = measure(vec, "docs", s, now=NOON)
    assert m2.ef == 20 and m2.recall_drift == 0 and m2.baseline_recall == m2.recall and not fragmented(m2, s)
