"""Pipelines on a real Postgres.

Embeddings here come from a deterministic test embedder (sha256 of the text -> 8 floats,
`neuron_tasks.testing.fake_llm.fake_vector`, called in-process: no model, no HTTP), so the tests measure
the pipeline machinery, not a model.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Iterator

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from neuron_tasks import pipelines
from neuron_tasks.db import make_pool
from neuron_tasks.testing.fake_llm import fake_vector

CALLS: list[int] = []


def embedder(texts: list[str]) -> list[list[float]]:
    CALLS.append(len(texts))
    return [fake_vector(t) for t in texts]


@pytest.fixture
def pl_db(clean_db: str) -> Iterator[str]:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT name FROM neuron_tasks.pipelines").fetchall():
            conn.execute("SELECT neuron_tasks.drop_pipeline(%s, true)", [name])
        conn.execute("DROP TABLE IF EXISTS public.pl_docs, public.pl_other CASCADE")
        conn.execute("CREATE TABLE public.pl_docs (id int PRIMARY KEY, body text, n int)")
    CALLS.clear()
    yield clean_db


@pytest.fixture
def pool(pl_db: str) -> Iterator[ConnectionPool]:
    p = make_pool(pl_db, max_size=4, name="test_pipelines")
    yield p
    p.close()


def source_state(conn: psycopg.Connection, table: str = "public.pl_docs") -> dict[str, str]:
    return dict(conn.execute(f"SELECT id::text, md5(body) FROM {table} WHERE body IS NOT NULL").fetchall())


def dest_state(conn: psycopg.Connection, table: str = "public.pl_docs_embeddings") -> dict[str, str]:
    return dict(conn.execute(f"SELECT key, source_hash FROM {table}").fetchall())


def test_backfill_then_changes_match_source(pl_db: str, pool: ConnectionPool) -> None:
    with psycopg.connect(pl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO pl_docs SELECT g, 'document number ' || g, g FROM generate_series(1, 2000) g")
        pipelines.create_pipeline(pl_db, "pl_docs", source="pl_docs", key="id", data="body", batch_size=250)
        assert pipelines.list_pipelines(pl_db, "pl_docs")[0]["status"] == "Stale"
        seen: list[tuple[int, int]] = []
        res = pipelines.sync(pool, "pl_docs", embedder=embedder, progress=lambda d, r: seen.append((d, r)))
        assert res.embedded == 2000 and res.batches == 8 and CALLS == [250] * 8
        assert seen[-1] == (2000, 0)
        assert dest_state(conn) == source_state(conn)
        vec = conn.execute("SELECT embedding FROM pl_docs_embeddings WHERE key = '7'").fetchone()[0]
        assert vec == pytest.approx(fake_vector("document number 7"), abs=1e-6)
        m = pipelines.list_pipelines(pl_db, "pl_docs")[0]
        assert (m["status"], m["count_source_records"], m["count_destination_records"],
                m["table_unprocessed_rows"]) == ("UpToDate", 2000, 2000, 0)

        # updates (one to the same text: no model call), deletes, inserts, a key change
        conn.execute("UPDATE pl_docs SET body = body || ' changed' WHERE id % 10 = 0")
        conn.execute("UPDATE pl_docs SET n = n + 1 WHERE id = 1")
        conn.execute("DELETE FROM pl_docs WHERE id % 7 = 0")
        conn.execute("INSERT INTO pl_docs SELECT g, 'new ' || g, g FROM generate_series(2001, 2100) g")
        conn.execute("UPDATE pl_docs SET id = 5000 WHERE id = 3")
        conn.execute("UPDATE pl_docs SET body = NULL WHERE id = 4")
        CALLS.clear()
        res = pipelines.sync(pool, "pl_docs", embedder=embedder)
        assert res.unchanged >= 1 and res.deleted >= 285
        assert sum(CALLS) == res.embedded
        assert dest_state(conn) == source_state(conn)
        assert pipelines.list_pipelines(pl_db, "pl_docs")[0]["status"] == "UpToDate"

        # writes committed by another session while the backfill of a third pipeline-sized batch runs
        conn.execute("UPDATE pl_docs SET body = body || ' again' WHERE id <= 300")
        calls = 0

        def writer_midway(texts: list[str]) -> list[list[float]]:
            nonlocal calls
            calls += 1
            if calls == 1:
                with psycopg.connect(pl_db, autocommit=True) as other, other.transaction():
                    other.execute("UPDATE pl_docs SET body = 'during ' || id WHERE id BETWEEN 1 AND 40")
                    other.execute("DELETE FROM pl_docs WHERE id BETWEEN 41 AND 60")
                    other.execute("INSERT INTO pl_docs SELECT g, 'late ' || g FROM generate_series(3001, 3030) g")
            return embedder(texts)

        during = pipelines.sync(pool, "pl_docs", embedder=writer_midway)
        assert during.batches >= 2 and calls >= 2
        assert dest_state(conn) == source_state(conn)

        # a retry of a finished sync is a no-op
        again = pipelines.sync(pool, "pl_docs", embedder=embedder)
        assert (again.embedded, again.batches) == (0, 0)


def test_row_changed_during_its_processing_is_processed_again(pl_db: str, pool: ConnectionPool) -> None:
    with psycopg.connect(pl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO pl_docs SELECT g, 'text ' || g FROM generate_series(1, 20) g")
        pipelines.create_pipeline(pl_db, "pl_docs", source="pl_docs", key="id", data="body", batch_size=50)
        changed = threading.Event()

        def racing(texts: list[str]) -> list[list[float]]:
            if not changed.is_set():  # a writer commits while the first batch is being embedded
                with psycopg.connect(pl_db, autocommit=True) as other:
                    other.execute("UPDATE pl_docs SET body = 'rewritten' WHERE id = 5")
                    other.execute("DELETE FROM pl_docs WHERE id = 6")
                changed.set()
            return embedder(texts)

        res = pipelines.sync(pool, "pl_docs", embedder=racing)
        assert res.batches == 2
        assert dest_state(conn) == source_state(conn)
        assert dest_state(conn)["5"] == hashlib.md5(b"rewritten").hexdigest()


def test_two_syncs_of_one_pipeline_never_run_at_once(pl_db: str, pool: ConnectionPool) -> None:
    with psycopg.connect(pl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO pl_docs SELECT g, 'text ' || g FROM generate_series(1, 30) g")
        pipelines.create_pipeline(pl_db, "pl_docs", source="pl_docs", key="id", data="body", batch_size=10)
        inside = threading.Event()
        release = threading.Event()

        def slow(texts: list[str]) -> list[list[float]]:
            inside.set()
            release.wait(10)
            return embedder(texts)

        t = threading.Thread(target=lambda: pipelines.sync(pool, "pl_docs", embedder=slow))
        t.start()
        assert inside.wait(10)
        assert pipelines.list_pipelines(pl_db, "pl_docs")[0]["status"] == "Processing"
        assert pipelines.sync(pool, "pl_docs", embedder=embedder).skipped
        release.set()
        t.join(10)
        assert dest_state(conn) == source_state(conn)


def test_failing_record_does_not_block_the_rest(pl_db: str, pool: ConnectionPool) -> None:
    with psycopg.connect(pl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO pl_docs SELECT g, 'text ' || g FROM generate_series(1, 10) g")
        conn.execute("UPDATE pl_docs SET body = 'POISON' WHERE id = 3")
        pipelines.create_pipeline(pl_db, "pl_docs", source="pl_docs", key="id", data="body")

        def picky(texts: list[str]) -> list[list[float]]:
            if "POISON" in texts:
                raise ValueError("model refused the text")
            return embedder(texts)

        res = pipelines.sync(pool, "pl_docs", embedder=picky)
        assert (res.embedded, res.failed) == (9, 1)
        m = pipelines.list_pipelines(pl_db, "pl_docs")[0]
        assert (m["status"], m["table_unprocessed_rows"], m["count_errors"]) == ("PartialErrors", 1, 1)
        errs = pipelines.pipeline_errors(pl_db, "pl_docs")
        assert errs[0]["key"] == "3" and "refused" in errs[0]["error"] and errs[0]["attempts"] == 1
        # backoff: not due yet, so a sync now leaves it alone
        assert pipelines.sync(pool, "pl_docs", embedder=picky).failed == 0
        conn.execute("UPDATE neuron_tasks.pipeline_backlog SET not_before = now()")  # due again, alone in its batch
        assert pipelines.sync(pool, "pl_docs", embedder=picky).failed == 1
        assert pipelines.pipeline_errors(pl_db, "pl_docs")[0]["attempts"] == 2
        conn.execute("UPDATE pl_docs SET body = 'fine now' WHERE id = 3")  # a change makes it due again
        assert pipelines.sync(pool, "pl_docs", embedder=picky).embedded == 1
        assert pipelines.pipeline_errors(pl_db, "pl_docs") == []
        assert dest_state(conn) == source_state(conn)


def test_disabled_keeps_backlog_and_live_enqueues_in_the_writers_transaction(pl_db: str) -> None:
    with psycopg.connect(pl_db, autocommit=True) as conn:
        pipelines.create_pipeline(pl_db, "pl_docs", source="pl_docs", key="id", data="body", mode="disabled")
        conn.execute("INSERT INTO pl_docs VALUES (1, 'a'), (2, 'b')")
        jobs = "SELECT count(*) FROM neuron_tasks.messages WHERE actor_name = 'neuron_tasks.pipeline_sync'"
        assert conn.execute(jobs).fetchone()[0] == 0
        assert pipelines.list_pipelines(pl_db, "pl_docs")[0]["table_unprocessed_rows"] == 2
        pipelines.update_pipeline(pl_db, "pl_docs", mode="live")
        assert conn.execute(jobs).fetchone()[0] == 1  # the kept backlog is caught up at once
        with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
            conn.execute("INSERT INTO pl_docs VALUES (3, 'c')")
            conn.execute("DO $$ BEGIN RAISE EXCEPTION 'roll back'; END $$")
        assert conn.execute(jobs).fetchone()[0] == 1
        assert pipelines.list_pipelines(pl_db, "pl_docs")[0]["table_unprocessed_rows"] == 2
        with conn.transaction():  # two statements, one job
            conn.execute("INSERT INTO pl_docs VALUES (3, 'c')")
            conn.execute("UPDATE pl_docs SET body = 'bb' WHERE id = 2")
        assert conn.execute(jobs).fetchone()[0] == 2
        queue = conn.execute("SELECT queue_name FROM neuron_tasks.messages").fetchone()[0]
        assert queue == "pipelines"


def test_live_job_runs_the_sync(pl_db: str, pool: ConnectionPool, broker: object) -> None:
    from neuron_tasks.pipelines.actors import run_pipeline_sync

    with psycopg.connect(pl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO pl_docs VALUES (1, 'a')")
        pipelines.create_pipeline(pl_db, "pl_docs", source="pl_docs", key="id", data="body", mode="live")
        out = run_pipeline_sync("pl_docs", pool, embedder)
        assert out["embedded"] == 1 and dest_state(conn) == source_state(conn)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"source": "pl_missing"}, "source table 'pl_missing' does not exist"),
    ({"key": "nope"}, "has no key column 'nope'"),
    ({"data": "nope"}, "has no data column 'nope'"),
    ({"data": "n"}, "is integer, not text"),
    ({"destination": "pl_other"}, "exists with another shape"),
    ({"destination": "pl_docs"}, "is the source table"),
    ({"step": "embed:local:no-such-model"}, "unknown local model"),
    ({"step": "embed:acme:m"}, "unknown provider"),
    ({"step": "chunk"}, "unknown step"),
    ({"mode": "sometimes"}, "auto_processing must be"),
    ({"sync_interval": "3 days"}, "between 1 second and 2 days"),
    ({"sync_interval": "0.5 seconds"}, "between 1 second and 2 days"),
    ({"batch_size": 0}, "batch_size must be"),
    ({"destination": "index:no such index"}, "invalid vector index name"),
])
def test_bad_input_creates_nothing(pl_db: str, kwargs: dict, message: str) -> None:
    with psycopg.connect(pl_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE pl_other (a int)")
        args = {"source": "pl_docs", "key": "id", "data": "body"} | kwargs
        with pytest.raises(pipelines.PipelineError, match=message):
            pipelines.create_pipeline(pl_db, "pl_docs", **args)
        assert conn.execute("SELECT count(*) FROM neuron_tasks.pipelines").fetchone()[0] == 0
        assert conn.execute("SELECT to_regclass('pl_docs_embeddings')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'neuron_tasks_pl_%'").fetchone()[0] == 0


def test_sql_api_and_drop(pl_db: str) -> None:
    with psycopg.connect(pl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO pl_docs VALUES (1, 'a')")
        conn.execute("SELECT neuron_tasks.create_pipeline('pl_docs', 'pl_docs', 'id', 'body', "
                     "background_sync_interval => '5 minutes')")
        with pytest.raises(psycopg.errors.DuplicateObject):
            conn.execute("SELECT neuron_tasks.create_pipeline('pl_docs', 'pl_docs', 'id', 'body')")
        p = pipelines.get_pipeline(pl_db, "pl_docs")
        assert (p["destination"], p["auto_processing"], str(p["background_sync_interval"])) == (
            "public.pl_docs_embeddings", "background", "0:05:00")
        # update and run from SQL too
        assert conn.execute("SELECT neuron_tasks.update_pipeline('pl_docs', batch_size => 9)").fetchone()[0]
        assert not conn.execute("SELECT neuron_tasks.update_pipeline('nope', 'live')").fetchone()[0]
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="auto_processing must be"):
            conn.execute("SELECT neuron_tasks.update_pipeline('pl_docs', 'sometimes')")
        assert pipelines.get_pipeline(pl_db, "pl_docs")["batch_size"] == 9
        message_id = conn.execute("SELECT neuron_tasks.run_pipeline('pl_docs')").fetchone()[0]
        payload = conn.execute("SELECT convert_from(payload, 'UTF8')::jsonb FROM neuron_tasks.messages "
                               "WHERE message_id = %s", [message_id]).fetchone()[0]
        assert (payload["actor_name"], payload["args"]) == ("neuron_tasks.pipeline_sync", ["pl_docs"])
        with pytest.raises(psycopg.errors.UndefinedObject, match="no pipeline named 'nope'"):
            conn.execute("SELECT neuron_tasks.run_pipeline('nope')")
        assert pipelines.drop_pipeline(pl_db, "pl_docs", drop_destination=True)
        assert not pipelines.drop_pipeline(pl_db, "pl_docs")
        conn.execute("INSERT INTO pl_docs VALUES (2, 'b')")  # no trigger left behind
        assert conn.execute("SELECT count(*) FROM neuron_tasks.pipeline_backlog").fetchone()[0] == 0
        assert conn.execute("SELECT to_regclass('pl_docs_embeddings')").fetchone()[0] is None


def test_tick_enqueues_due_background_pipelines_once(pl_db: str, pool: ConnectionPool, broker: object) -> None:
    from neuron_tasks.pipelines.actors import run_pipeline_tick

    with psycopg.connect(pl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO pl_docs VALUES (1, 'a')")
        pipelines.create_pipeline(pl_db, "pl_docs", source="pl_docs", key="id", data="body",
                                  sync_interval="1 hour")
        assert run_pipeline_tick(pl_db) == ["pl_docs"]
        assert run_pipeline_tick(pl_db) == []  # one is already waiting
        conn.execute("UPDATE neuron_tasks.messages SET state = 'failed'")
        assert run_pipeline_tick(pl_db) == ["pl_docs"]  # a dead sync does not block the next
        conn.execute("DELETE FROM neuron_tasks.messages")
        pipelines.sync(pool, "pl_docs", embedder=embedder)
        conn.execute("INSERT INTO pl_docs VALUES (2, 'b')")
        assert run_pipeline_tick(pl_db) == []  # synced less than an hour ago
        pipelines.update_pipeline(pl_db, "pl_docs", sync_interval="1 second")
        conn.execute("UPDATE neuron_tasks.pipelines SET last_sync_at = now() - interval '2 seconds'")
        assert run_pipeline_tick(pl_db) == ["pl_docs"]
        pipelines.update_pipeline(pl_db, "pl_docs", mode="disabled")
        conn.execute("DELETE FROM neuron_tasks.messages")
        assert run_pipeline_tick(pl_db) == []


def test_a_long_sync_job_continues_in_new_jobs(pl_db: str, pool: ConnectionPool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync job stops after its time slice and enqueues its continuation (never the time limit)."""
    from neuron_tasks.pipelines.actors import run_pipeline_sync

    monkeypatch.setenv("NEURON_TASKS_PIPELINES_SYNC_SLICE_S", "0.001")
    jobs = "SELECT count(*) FROM neuron_tasks.messages WHERE actor_name = 'neuron_tasks.pipeline_sync'"
    with psycopg.connect(pl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO pl_docs SELECT g, 'document number ' || g, g FROM generate_series(1, 500) g")
        pipelines.create_pipeline(pl_db, "pl_docs", source="pl_docs", key="id", data="body", batch_size=100)
        runs, out = 1, run_pipeline_sync("pl_docs", pool, embedder)
        while out["more"]:
            assert out["batches"] == 1 and conn.execute(jobs).fetchone()[0] == 1
            conn.execute("DELETE FROM neuron_tasks.messages")  # what a worker does with the continuation
            runs, out = runs + 1, run_pipeline_sync("pl_docs", pool, embedder)
        assert runs in (5, 6)  # 5 full batches, and maybe one that finds the backlog empty
        assert conn.execute(jobs).fetchone()[0] == 0
        assert dest_state(conn) == source_state(conn)


def test_default_batch_size_comes_from_the_settings(pl_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURON_TASKS_PIPELINES_DEFAULT_BATCH_SIZE", "250")
    assert pipelines.create_pipeline(pl_db, "pl_docs", source="pl_docs", key="id", data="body")["batch_size"] == 250
    assert pipelines.create_pipeline(pl_db, "pl_docs2", source="pl_docs", key="id", data="body",
                                     destination="pl_docs2_e", batch_size=7)["batch_size"] == 7


def test_changed_texts_are_embedded_sorted_by_length(pl_db: str, pool: ConnectionPool) -> None:
    """Each model call gets texts of similar length (less padding); batches keep batch_size."""
    calls: list[list[str]] = []

    def recording(texts: list[str]) -> list[list[float]]:
        calls.append(list(texts))
        return embedder(texts)

    with psycopg.connect(pl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO pl_docs SELECT g, repeat('word ', (g * 37) % 50 + 1), g "
                     "FROM generate_series(1, 300) g")
        pipelines.create_pipeline(pl_db, "pl_docs", source="pl_docs", key="id", data="body", batch_size=40)
        res = pipelines.sync(pool, "pl_docs", embedder=recording)
        assert res.embedded == 300 and [len(c) for c in calls] == [40] * 7 + [20]
        for before, after in itertools.pairwise(calls):
            assert max(map(len, before)) <= min(map(len, after))
        assert dest_state(conn) == source_state(conn)


def test_syncs_leave_the_llm_cache_alone_unless_asked(pl_db: str, pool: ConnectionPool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The default embedder (LLM service, here against the fake OpenAI-compatible server) does
    not fill the LLM cache with a backfill's vectors unless pipelines_llm_cache is on."""
    from neuron_tasks.testing.fake_llm import FakeProvider

    cached = "SELECT count(*) FROM neuron_tasks.llm_cache"
    with FakeProvider() as fake, psycopg.connect(pl_db, autocommit=True) as conn:
        monkeypatch.setenv("NEURON_TASKS_LLM_HTTP_BASE_URL", fake.base_url)
        conn.execute("TRUNCATE neuron_tasks.llm_cache")
        conn.execute("INSERT INTO pl_docs SELECT g, 'document number ' || g, g FROM generate_series(1, 30) g")
        pipelines.create_pipeline(pl_db, "pl_docs", source="pl_docs", key="id", data="body",
                                  step="embed:http:fake-embed")
        assert pipelines.sync(pool, "pl_docs").embedded == 30
        assert conn.execute(cached).fetchone()[0] == 0
        assert dest_state(conn) == source_state(conn)
        monkeypatch.setenv("NEURON_TASKS_PIPELINES_LLM_CACHE", "true")
        conn.execute("UPDATE pl_docs SET body = body || ' v2' WHERE id <= 10")
        assert pipelines.sync(pool, "pl_docs").embedded == 10
        assert conn.execute(cached).fetchone()[0] == 10
