"""Pipelines writing into a vector index (`destination="index:NAME"`), on a real Postgres.

Embeddings come from the deterministic test embedder (`fake_vector`: sha256 of the text -> 8
floats), so a search for a text's own vector must return that text's key first.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from neuron_tasks import pipelines
from neuron_tasks.db import make_pool
from neuron_tasks.testing.fake_llm import fake_vector
from neuron_tasks.vectors import Vectors, VectorSettings

INDEXES = ("ix_docs_idx", "notes", "small", "neg", "keep", "live_idx", "fresh", "f")


def embedder(texts: list[str]) -> list[list[float]]:
    return [fake_vector(t) for t in texts]


@pytest.fixture
def ix_db(clean_db: str) -> Iterator[str]:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT name FROM neuron_tasks.pipelines").fetchall():
            conn.execute("SELECT neuron_tasks.drop_pipeline(%s, true)", [name])
        for index in INDEXES:
            conn.execute("SELECT neuron_tasks.drop_vector_index(%s)", [index])
        conn.execute("DROP TABLE IF EXISTS public.ix_docs, public.ix_notes CASCADE")
        conn.execute("CREATE TABLE public.ix_docs (id bigint PRIMARY KEY, body text)")
        conn.execute("CREATE TABLE public.ix_notes (slug text PRIMARY KEY, body text)")
    yield clean_db


@pytest.fixture
def pool(ix_db: str) -> Iterator[ConnectionPool]:
    p = make_pool(ix_db, max_size=4, name="test_pipelines_index")
    yield p
    p.close()


@pytest.fixture
def searcher(ix_db: str) -> Iterator[Vectors]:
    v = Vectors(ix_db, settings=VectorSettings(database_url=ix_db, vectors_sync_s=0.0, vectors_sample_rate=0.0))
    yield v
    v.close()


def source_state(conn: psycopg.Connection, table: str, key: str) -> dict[str, str]:
    return dict(conn.execute(f"SELECT {key}::text, md5(body) FROM {table} WHERE body IS NOT NULL").fetchall())


def index_state(conn: psycopg.Connection, index: str) -> dict[str, str]:
    return dict(conn.execute("SELECT metadata->>'key', metadata->>'source_hash' FROM neuron_tasks.vector_items "
                             "WHERE index_name = %s AND NOT deleted", [index]).fetchall())


def test_integer_keys_backfill_changes_and_search(ix_db: str, pool: ConnectionPool, searcher: Vectors) -> None:
    with psycopg.connect(ix_db, autocommit=True) as conn:
        conn.execute("INSERT INTO ix_docs SELECT g, 'passage ' || g FROM generate_series(1, 600) g")
        row = pipelines.create_pipeline(ix_db, "ix_docs", source="ix_docs", key="id", data="body",
                                        destination="index:ix_docs_idx", batch_size=200)
        assert row["destination"] == "index:ix_docs_idx"
        res = pipelines.sync(pool, "ix_docs", embedder=embedder)
        assert (res.embedded, res.batches, res.failed) == (600, 3, 0)
        info = searcher.info("ix_docs_idx")
        assert (info["dim"], info["space"], info["live_count"]) == (8, "cosine", 600)
        assert index_state(conn, "ix_docs_idx") == source_state(conn, "ix_docs", "id")
        # integer keys are the item ids; the text is the item's body (hybrid search works)
        item = conn.execute("SELECT id, body, metadata FROM neuron_tasks.vector_items "
                            "WHERE index_name = 'ix_docs_idx' AND id = 42").fetchone()
        assert item[1] == "passage 42"
        assert item[2]["pipeline"] == "ix_docs" and item[2]["key"] == "42"
        hit = searcher.search("ix_docs_idx", fake_vector("passage 42"), k=3).hits[0]
        assert hit.id == 42 and hit.distance == pytest.approx(0.0, abs=1e-5)

        conn.execute("UPDATE ix_docs SET body = 'rewritten ' || id WHERE id <= 50")
        conn.execute("DELETE FROM ix_docs WHERE id BETWEEN 100 AND 149")
        conn.execute("INSERT INTO ix_docs SELECT g, 'fresh ' || g FROM generate_series(601, 650) g")
        res = pipelines.sync(pool, "ix_docs", embedder=embedder)
        assert (res.embedded, res.deleted, res.failed) == (100, 50, 0)
        assert index_state(conn, "ix_docs_idx") == source_state(conn, "ix_docs", "id")
        assert searcher.info("ix_docs_idx")["live_count"] == 600
        assert searcher.search("ix_docs_idx", fake_vector("rewritten 7"), k=1).ids == [7]
        assert searcher.search("ix_docs_idx", fake_vector("fresh 633"), k=1).ids == [633]
        assert 120 not in searcher.search("ix_docs_idx", fake_vector("passage 120"), k=10).ids
        m = pipelines.list_pipelines(ix_db, "ix_docs")[0]
        assert (m["status"], m["count_source_records"], m["count_destination_records"]) == ("UpToDate", 600, 600)

        again = pipelines.sync(pool, "ix_docs", embedder=embedder)
        assert (again.embedded, again.batches) == (0, 0)


def test_text_keys_get_stable_hashed_ids(ix_db: str, pool: ConnectionPool, searcher: Vectors) -> None:
    with psycopg.connect(ix_db, autocommit=True) as conn:
        conn.execute("INSERT INTO ix_notes SELECT 'note-' || g, 'note body ' || g FROM generate_series(1, 120) g")
        conn.execute("SELECT neuron_tasks.create_pipeline('ix_notes', 'ix_notes', 'slug', 'body', 'index:notes')")
        res = pipelines.sync(pool, "ix_notes", embedder=embedder)
        assert (res.embedded, res.failed) == (120, 0)
        assert index_state(conn, "notes") == source_state(conn, "ix_notes", "slug")
        want = conn.execute("SELECT neuron_tasks.pipeline_item_id_v1('note-17', 'text')").fetchone()[0]
        assert want >= 0
        hit = searcher.search("notes", fake_vector("note body 17"), k=1).hits[0]
        assert hit.id == want
        searcher.attach_details("notes", [hit])
        assert hit.metadata is not None and hit.metadata["key"] == "note-17"
        conn.execute("DELETE FROM ix_notes WHERE slug = 'note-17'")
        assert pipelines.sync(pool, "ix_notes", embedder=embedder).deleted == 1
        assert searcher.search("notes", fake_vector("note body 17"), k=1).ids != [want]


def test_index_of_another_dimension_fails_the_sync_clearly(ix_db: str, pool: ConnectionPool,
                                                           searcher: Vectors) -> None:
    searcher.create_index("small", dim=4)
    with psycopg.connect(ix_db, autocommit=True) as conn:
        conn.execute("INSERT INTO ix_docs SELECT g, 'passage ' || g FROM generate_series(1, 10) g")
        # as from SQL: no model check at creation, so the first sync finds the mismatch
        pipelines.create_pipeline(ix_db, "ix_docs", source="ix_docs", key="id", data="body", destination="index:small",
                                  check_model=False)
        with pytest.raises(pipelines.PipelineError, match="has dimension 4 but the pipeline's model gives 8"):
            pipelines.sync(pool, "ix_docs", embedder=embedder)
        m = pipelines.list_pipelines(ix_db, "ix_docs")[0]
        assert m["status"] == "Failed" and "dimension 4" in m["last_error"]
        assert m["table_unprocessed_rows"] == 10  # nothing lost: the backlog is kept
        assert searcher.info("small")["live_count"] == 0


def test_negative_key_fails_alone(ix_db: str, pool: ConnectionPool) -> None:
    with psycopg.connect(ix_db, autocommit=True) as conn:
        conn.execute("INSERT INTO ix_docs SELECT g, 'passage ' || g FROM generate_series(-2, 5) g")
        pipelines.create_pipeline(ix_db, "ix_docs", source="ix_docs", key="id", data="body", destination="index:neg")
        res = pipelines.sync(pool, "ix_docs", embedder=embedder)
        assert (res.embedded, res.failed) == (6, 2)  # 0 is a valid id; -2 and -1 are not
        errs = {e["key"]: e["error"] for e in pipelines.pipeline_errors(ix_db, "ix_docs")}
        assert set(errs) == {"-2", "-1"} and "must be >= 0" in errs["-1"]


def test_stale_items_of_a_former_pipeline_go_and_drop_removes_the_index(ix_db: str, pool: ConnectionPool,
                                                                        searcher: Vectors) -> None:
    with psycopg.connect(ix_db, autocommit=True) as conn:
        conn.execute("INSERT INTO ix_docs SELECT g, 'passage ' || g FROM generate_series(1, 20) g")
        pipelines.create_pipeline(ix_db, "ix_docs", source="ix_docs", key="id", data="body", destination="index:keep")
        pipelines.sync(pool, "ix_docs", embedder=embedder)
        assert pipelines.drop_pipeline(ix_db, "ix_docs")  # the index stays
        assert searcher.info("keep")["live_count"] == 20
        conn.execute("DELETE FROM ix_docs WHERE id > 10")  # not captured: no pipeline now
        pipelines.create_pipeline(ix_db, "ix_docs2", source="ix_docs", key="id", data="body", destination="index:keep",
                                  check_model=False)
        res = pipelines.sync(pool, "ix_docs2", embedder=embedder)
        assert (res.deleted, res.embedded) == (10, 0)  # same texts: nothing re-embedded
        assert index_state(conn, "keep") == source_state(conn, "ix_docs", "id")
        with pytest.raises(pipelines.PipelineError, match="belongs to another pipeline"):
            pipelines.create_pipeline(ix_db, "ix_docs3", source="ix_docs", key="id", data="body",
                                      destination="index:keep", check_model=False)
        assert pipelines.drop_pipeline(ix_db, "ix_docs2", drop_destination=True)
        assert conn.execute("SELECT count(*) FROM neuron_tasks.vector_indexes WHERE name = 'keep'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM neuron_tasks.vector_items WHERE index_name = 'keep'"
                            ).fetchone()[0] == 0


def test_live_mode_into_an_index_rollback_leaves_nothing(ix_db: str, pool: ConnectionPool, broker: object,
                                                         searcher: Vectors) -> None:
    from neuron_tasks.pipelines import actors as actors

    with psycopg.connect(ix_db, autocommit=True) as conn:
        pipelines.create_pipeline(ix_db, "ix_docs", source="ix_docs", key="id", data="body", mode="live",
                                  destination="index:live_idx")
        jobs = "SELECT count(*) FROM neuron_tasks.messages WHERE queue_name = 'pipelines'"
        assert conn.execute(jobs).fetchone()[0] == 1  # the backfill's, enqueued by create_pipeline
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute("INSERT INTO ix_docs VALUES (1, 'rolled back')")
            raise RuntimeError("abort")
        assert conn.execute(jobs).fetchone()[0] == 1
        conn.execute("INSERT INTO ix_docs VALUES (2, 'committed text')")
        assert conn.execute(jobs).fetchone()[0] == 2
        out = actors.run_pipeline_sync("ix_docs", pool=pool, embedder=embedder)
        assert out["embedded"] == 1
        assert searcher.search("live_idx", fake_vector("committed text"), k=1).ids == [2]
        assert index_state(conn, "live_idx") == {"2": source_state(conn, "ix_docs", "id")["2"]}


@pytest.mark.parametrize(("destination", "message"), [
    ("index:", "invalid vector index name"),
    ("index:bad name!", "invalid vector index name"),
])
def test_bad_index_destination_creates_nothing(ix_db: str, destination: str, message: str) -> None:
    with pytest.raises(pipelines.PipelineError, match=message):
        pipelines.create_pipeline(ix_db, "ix_docs", source="ix_docs", key="id", data="body", destination=destination)
    with psycopg.connect(ix_db, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM neuron_tasks.pipelines").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'neuron_tasks_pl_%'").fetchone()[0] == 0


def test_folder_pipelines_refuse_an_index_destination(ix_db: str, tmp_path: object) -> None:
    with pytest.raises(pipelines.PipelineError, match="index:NAME destinations are for table sources"):
        pipelines.create_volume_pipeline(ix_db, "ix_folder", folder=str(tmp_path), destination="index:f")


def test_http_model_and_index_dimension_are_checked_at_creation(ix_db: str, searcher: Vectors,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from neuron_tasks.testing.fake_llm import FakeProvider

    searcher.create_index("small", dim=4)
    with FakeProvider(models={"fake-embed"}) as fake, psycopg.connect(ix_db, autocommit=True) as conn:
        monkeypatch.setenv("NEURON_TASKS_LLM_HTTP_BASE_URL", fake.base_url)
        args = {"source": "ix_docs", "key": "id", "data": "body"}
        with pytest.raises(pipelines.PipelineError, match=r"model check failed for no-such-model.*does not exist"):
            pipelines.create_pipeline(ix_db, "ix_docs", step="embed:http:no-such-model", **args)
        with pytest.raises(pipelines.PipelineError, match="index small has dimension 4 but the model gives 8"):
            pipelines.create_pipeline(ix_db, "ix_docs", step="embed:http:fake-embed", destination="index:small",
                                      **args)
        assert conn.execute("SELECT count(*) FROM neuron_tasks.pipelines").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'neuron_tasks_pl_%'").fetchone()[0] == 0
        assert conn.execute("SELECT to_regclass('ix_docs_embeddings')").fetchone()[0] is None
        row = pipelines.create_pipeline(ix_db, "ix_docs", step="embed:http:fake-embed", destination="index:fresh",
                                        **args)
        assert row["destination"] == "index:fresh" and fake.count("/embeddings", 404) == 1
