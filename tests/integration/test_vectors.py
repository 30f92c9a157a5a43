"""Vector indexes on a real PostgreSQL: restart round trip, deletes, upserts, filters, metrics, hybrid."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from neuron_tasks.testing import truncate
from neuron_tasks.vectors import Vectors, VectorSettings
from neuron_tasks.vectors.tuner import tune_alpha

pytest.importorskip("hnswlib")


@pytest.fixture
def vdb(clean_db: str) -> str:
    truncate(clean_db, "vectors")
    return clean_db


def make(url: str, **kw: object) -> Vectors:
    opts = {"vectors_sample_rate": 1.0, "vectors_sync_s": 0.2, "vectors_metrics_flush_s": 0.1,
            "tuner_min_samples": 5, **kw}
    return Vectors(url, settings=VectorSettings(database_url=url, **opts))  # type: ignore[arg-type]


@pytest.fixture
def vec(vdb: str) -> Iterator[Vectors]:
    v = make(vdb)
    yield v
    v.close()


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim)) * 4
    return (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def test_round_trip_through_restart(vec: Vectors, vdb: str) -> None:
    x = clustered(2000, 16)
    vec.create_index("docs", dim=16, space="l2")
    vec.add("docs", range(2000), x, metadata=[{"n": i} for i in range(2000)])
    vec.save("docs")
    vec.add("docs", [5000], x[:1] + 0.01)  # after the snapshot: replayed on load
    vec.delete("docs", [10])
    before = [vec.search("docs", x[i], k=10, ef=100).ids for i in range(20)]

    restarted = make(vdb)
    try:
        st = restarted.state("docs")
        assert st.loaded_from == "snapshot"  # loaded, not rebuilt
        assert len(st.graph.live) == 2000 and 10 not in st.graph.live and 5000 in st.graph.live
        after = [restarted.search("docs", x[i], k=10, ef=100).ids for i in range(20)]
        assert after == before
        res = restarted.search("docs", x[3], k=1, include_metadata=True)
        assert res.hits[0].id == 3 and res.hits[0].metadata == {"n": 3}
    finally:
        restarted.close()

    # Without a snapshot a process rebuilds from the rows (PostgreSQL is the source of truth).
    with psycopg.connect(vdb, autocommit=True) as conn:
        conn.execute("DELETE FROM neuron_tasks.vector_snapshots")
    rebuilt = make(vdb)
    try:
        st = rebuilt.state("docs")
        assert st.loaded_from == "rebuild" and len(st.graph.live) == 2000
        assert rebuilt.search("docs", x[0], k=10, ef=200).ids == vec.search("docs", x[0], k=10, ef=200).ids
    finally:
        rebuilt.close()
    with psycopg.connect(vdb, autocommit=True) as conn:  # the rebuild saved a snapshot for the next start
        assert conn.execute("SELECT count(*) FROM neuron_tasks.vector_snapshots").fetchone()[0] == 1


def test_deleted_ids_never_returned(vec: Vectors, vdb: str) -> None:
    x = clustered(1500, 8, seed=1)
    vec.create_index("d", dim=8, space="cosine")
    other = make(vdb)  # another searching process
    try:
        vec.add("d", range(1500), x)
        other.search("d", x[0], k=5)
        gone = list(range(0, 1500, 3))
        assert vec.delete("d", gone) == len(gone)
        assert vec.delete("d", gone) == 0  # already gone
        time.sleep(0.3)
        for client in (vec, other):
            for i in range(0, 1500, 50):
                ids = client.search("d", x[i], k=50).ids
                assert not set(ids) & set(gone)
            assert len(client.state("d").graph.live) == 1000
        info = vec.info("d")
        assert info["live_count"] == 1000 and info["deleted_count"] == 500
        # New items take the tombstones' slots; hnswlib's element count does not grow.
        vec.add("d", range(2000, 2100), x[:100])
        g = vec.state("d").graph
        assert g.elements == 1500 and len(g.live) == 1100 and len(g.tombstones) == 400
        assert vec.info("d")["deleted_count"] == 400
        # A deleted id comes back when added again.
        vec.add("d", [0], x[:1])
        assert vec.search("d", x[0], k=1).ids == [0]
    finally:
        other.close()


def test_upsert_filter_and_metrics(vec: Vectors) -> None:
    x = clustered(800, 8, seed=2)
    vec.create_index("u", dim=8, space="l2")
    vec.add("u", range(800), x, metadata=[{"colour": "red" if i % 2 else "blue"} for i in range(800)])
    vec.upsert("u", [1], -x[1:2] * 10)
    assert vec.search("u", -x[1] * 10, k=1).ids == [1]
    assert vec.info("u")["live_count"] == 800
    res = vec.search("u", x[4], k=20, filter={"colour": "blue"})
    assert len(res.ids) == 20 and all(i % 2 == 0 for i in res.ids)
    for i in range(30):
        vec.search("u", x[i], k=10)
    assert vec.flush_metrics()
    row = vec.stats("u")[0]
    assert row["queries"] >= 32 and row["p50_ms"] is not None and row["p99_ms"] >= row["p50_ms"]
    with psycopg.connect(vec._url, autocommit=True) as conn:  # type: ignore[arg-type]
        sampled = conn.execute("SELECT count(*) FROM neuron_tasks.vector_query_samples").fetchone()[0]
        view = conn.execute("SELECT queries FROM neuron_tasks.vector_query_stats WHERE index_name='u'").fetchone()
    assert sampled >= 30 and view[0] >= 32  # filtered searches are measured but not sampled


def test_hybrid_search_and_alpha_from_feedback(vec: Vectors) -> None:
    rng = np.random.default_rng(4)
    words = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]
    n = 400
    x = rng.normal(size=(n, 8)).astype(np.float32)
    texts = [f"{words[i % 8]} {words[(i * 3) % 8]} item{i}" for i in range(n)]
    vec.create_index("h", dim=8, space="cosine")
    vec.add("h", range(n), x, texts=texts)
    res = vec.hybrid_search("h", "mango", k=10, vector=x[0])
    assert res.mode == "hybrid" and res.alpha == 0.5 and len(res.ids) == 10
    # Users only find documents named item<N> relevant: the text side knows, the vector side does not.
    for i in range(12):
        target = 37 * i % n
        r = vec.hybrid_search("h", f"item{target}", k=10, vector=rng.normal(size=8))
        vec.feedback(r.query_id, [target])
    out = tune_alpha(vec, "h")
    assert out is not None and out["alpha"] < 0.5 and out["ndcg"] >= out["ndcg_before"]
    assert vec.info("h")["alpha"] == pytest.approx(out["alpha"])
    r = vec.hybrid_search("h", "item5", k=3, vector=rng.normal(size=8))
    assert r.ids[0] == 5


def test_unknown_index_and_bad_input(vec: Vectors) -> None:
    from neuron_tasks.vectors import UnknownIndex

    with pytest.raises(UnknownIndex):
        vec.search("nope", [0.0] * 4)
    vec.create_index("b", dim=4, space="l2")
    with pytest.raises(ValueError):
        vec.add("b", [1], [[0.0, 1.0]])
    with pytest.raises(ValueError):
        vec.create_index("c", dim=4, space="hamming")
    assert vec.search("b", [0.0] * 4, k=5).ids == []
    assert vec.drop_index("b") and not vec.drop_index("b")


def test_embed_and_index_through_the_llm_provider(vdb: str, monkeypatch: pytest.MonkeyPatch,
                                                  broker: object) -> None:
    """(`broker` is set as Dramatiq's global broker: importing the actors module declares them on it.)"""
    fake_mod = pytest.importorskip("neuron_tasks.testing.fake_llm")
    from neuron_tasks import vectors
    from neuron_tasks.vectors import embed
    from neuron_tasks.vectors.actors import embed_and_index_items

    with fake_mod.FakeProvider() as fake:
        monkeypatch.setenv("NEURON_TASKS_LLM_PROVIDER", "http")
        monkeypatch.setenv("NEURON_TASKS_LLM_HTTP_BASE_URL", fake.base_url)
        monkeypatch.setattr(embed, "_services", {})
        client = make(vdb)
        vectors.set_client(client)
        try:
            dim = len(embed.embed_texts(client.pool, ["probe"])[0])
            client.create_index("texts", dim=dim, space="cosine")
            items = [{"id": i, "text": f"document {i} about {'cats' if i % 2 else 'dogs'}", "metadata": {"i": i}}
                     for i in range(20)]
            out = embed_and_index_items("texts", items)
            assert out["added"] == 20 and client.info("texts")["live_count"] == 20
            res = client.search("texts", "document 7 about cats", k=1, include_metadata=True)
            assert res.ids == [7] and res.hits[0].text == "document 7 about cats"  # same text, same vector
            hyb = client.hybrid_search("texts", "dogs", k=5)
            assert all(i % 2 == 0 for i in hyb.ids[:5])
        finally:
            vectors.set_client(None)
            client.close()


def test_index_cli(vdb: str, tmp_path: Path) -> None:
    from tests.integration.test_cli import cli

    cli(vdb, "index", "create", "c1", "--dim", "3", "--space", "l2")
    assert cli(vdb, "index", "create", "c1", "--dim", "3", check=False).returncode != 0
    lines = [json.dumps({"id": i, "vector": [i, 0, 0], "metadata": {"i": i}}) for i in range(50)]
    (tmp_path / "v.jsonl").write_text("\n".join(lines))
    assert "snapshot saved" in cli(vdb, "index", "add", "c1", "--file", str(tmp_path / "v.jsonl")).stdout
    out = json.loads(cli(vdb, "index", "search", "c1", "--vector", "[7.2, 0, 0]", "-k", "2", "--json").stdout)
    assert [h["id"] for h in out["hits"]] == [7, 8] and out["hits"][0]["metadata"] == {"i": 7}
    stats = json.loads(cli(vdb, "index", "stats", "c1", "--json").stdout)
    assert stats["indexes"][0]["live_count"] == 50 and stats["indexes"][0]["queries"] >= 1
    assert "Vector indexes" in cli(vdb, "index", "stats").stdout
    cli(vdb, "index", "drop", "c1", "--yes")
    assert cli(vdb, "index", "drop", "c1", "--yes", check=False).returncode != 0
