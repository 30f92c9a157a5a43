"""The dashboard's pipelines page on a real PostgreSQL: pipeline_metrics per pipeline,
per-record errors (escaped), bounded reads of large pipelines, and "Sync now" (CSRF-protected)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import markupsafe
import psycopg
import pytest

from neuron_tasks import pipelines
from neuron_tasks.dashboard.data import DashboardData
from neuron_tasks.db import make_pool
from neuron_tasks.pipelines import page as page_module
from tests.integration.dashboard_helpers import client, csrf

EVIL = "<script>alert('pwned')</script>"


def tiny(texts: list[str]) -> list[list[float]]:
    return [[float(len(t)), 1.0] for t in texts]


def picky(texts: list[str]) -> list[list[float]]:
    if any("bad" in t for t in texts):
        raise ValueError(EVIL + " for " + ",".join(texts))
    return tiny(texts)


@pytest.fixture
def dpl_db(clean_db: str) -> Iterator[str]:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT name FROM neuron_tasks.pipelines").fetchall():
            conn.execute("SELECT neuron_tasks.drop_pipeline(%s, true)", [name])
        for (name,) in conn.execute("SELECT name FROM neuron_tasks.pipeline_volumes").fetchall():
            pipelines.drop_volume_pipeline(clean_db, name, drop_destination=True)
        conn.execute("SELECT neuron_tasks.drop_vector_index('dpl_idx')")
        conn.execute("DROP TABLE IF EXISTS public.dpl_a, public.dpl_b, public.dpl_c CASCADE")
        for t in ("dpl_a", "dpl_b", "dpl_c"):
            conn.execute(f"CREATE TABLE public.{t} (id int PRIMARY KEY, body text)")
    yield clean_db


def sync(url: str, name: str, embedder: pipelines.Embedder = tiny) -> None:
    pool = make_pool(url, max_size=2, name="test_dashboard_pipelines")
    try:
        pipelines.sync(pool, name, embedder=embedder)
    finally:
        pool.close()


def rows_of(page: str) -> dict[str, str]:
    """pipeline -> its table row's HTML."""
    return dict(re.findall(r'<tr data-pipeline="([^"]+)">(.*?)</tr>', page, re.S))


def status_in(row: str) -> str:
    match = re.search(r'data-status="([^"]+)"', row)
    assert match, row
    return match.group(1)


def cells(row: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def view(url: str) -> dict[str, dict]:
    return {m["pipeline"]: m for m in pipelines.list_pipelines(url)}


def test_page_shows_each_pipeline_with_status_counts_and_share_done(dpl_db: str) -> None:
    with psycopg.connect(dpl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO dpl_a SELECT g, 'doc ' || g FROM generate_series(1, 30) g")
        conn.execute("INSERT INTO dpl_b SELECT g, 'text ' || g FROM generate_series(1, 5) g")
    pipelines.create_pipeline(dpl_db, "dpl_stale", source="dpl_a", key="id", data="body")
    pipelines.create_pipeline(dpl_db, "dpl_done", source="dpl_b", key="id", data="body", mode="disabled")
    pipelines.create_pipeline(dpl_db, "dpl_empty", source="dpl_c", key="id", data="body")
    sync(dpl_db, "dpl_done")
    sync(dpl_db, "dpl_empty")
    with client(dpl_db) as c:
        page = c.get("/parts/pipelines").text
    rows = rows_of(page)
    assert set(rows) == {"dpl_stale", "dpl_done", "dpl_empty"}
    assert {n: status_in(r) for n, r in rows.items()} == {
        "dpl_stale": "Stale", "dpl_done": "UpToDate", "dpl_empty": "NoResults"}
    assert {n: m["status"] for n, m in view(dpl_db).items()} == {n: status_in(r) for n, r in rows.items()}
    assert 'class="badge ps-busy" data-status="Stale"' in rows["dpl_stale"]
    assert 'class="badge ps-ok" data-status="UpToDate"' in rows["dpl_done"]
    assert 'class="badge ps-none" data-status="NoResults"' in rows["dpl_empty"]
    # name, kind, mode, status, unprocessed, source, destination, done, errors, last sync, last error
    stale = cells(rows["dpl_stale"])
    assert stale[1:9] == ["table", "background", "Stale", "30", "30", "0", "0%", "0"]
    assert stale[9] == "never"
    done = cells(rows["dpl_done"])
    assert done[1:9] == ["table", "disabled", "UpToDate", "0", "5", "5", "100%", "0"]
    assert done[9].endswith(" ago")
    assert "public.dpl_b → public.dpl_done_embeddings" in rows["dpl_done"]
    assert page.count('class="sync-now"') == 3
    assert 'id="raw-tables"' in page and "table=neuron_tasks.pipeline_backlog" in page
    assert "not-installed" not in page


def test_a_vector_index_destination_shows_its_live_items(dpl_db: str) -> None:
    with psycopg.connect(dpl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO dpl_a SELECT g, 'passage ' || g FROM generate_series(1, 12) g")
    pipelines.create_pipeline(dpl_db, "dpl_ix", source="dpl_a", key="id", data="body", destination="index:dpl_idx")
    with client(dpl_db) as c:
        before = rows_of(c.get("/parts/pipelines").text)["dpl_ix"]
    sync(dpl_db, "dpl_ix")
    with client(dpl_db) as c:
        after = rows_of(c.get("/parts/pipelines").text)["dpl_ix"]
    assert "public.dpl_a → index:dpl_idx" in after
    assert status_in(before) == "Stale" and cells(before)[4] == "12"
    assert cells(after)[3:9] == ["UpToDate", "0", "12", "12", "100%", "0"]
    assert view(dpl_db)["dpl_ix"]["count_destination_records"] == 12


def test_a_folder_pipeline_shows_scans_and_files_without_sync_now(dpl_db: str, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha " * 10)
    (tmp_path / "b.txt").write_text("beta " * 10)
    pipelines.create_volume_pipeline(dpl_db, "dpl_folder", folder=tmp_path)
    with client(dpl_db) as c:
        assert status_in(rows_of(c.get("/parts/pipelines").text)["dpl_folder"]) == "Stale"
    pool = make_pool(dpl_db, max_size=2, name="test_dashboard_pipelines")
    try:
        pipelines.scan_volume(pool, "dpl_folder", embedder=tiny)
    finally:
        pool.close()
    with client(dpl_db) as c:
        page = c.get("/parts/pipelines").text
        token = c.app.state.guard.csrf_token(c.cookies["nt_session"])  # no form on this page to read it from
        assert c.post("/parts/pipelines/sync", data={"name": "dpl_folder", "csrf": token}).status_code == 404
    row = rows_of(page)["dpl_folder"]
    assert cells(row)[1:9] == ["folder", "background", "UpToDate", "1 scans", "2 files", "2", "-", "0"]
    assert 'class="sync-now"' not in row


def test_per_record_errors_and_last_error_are_listed_escaped(dpl_db: str) -> None:
    with psycopg.connect(dpl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO dpl_a SELECT g, CASE WHEN g % 4 = 0 THEN 'bad ' ELSE 'good ' END || g"
                     " FROM generate_series(1, 12) g")
        conn.execute("INSERT INTO dpl_b VALUES (1, 'one')")
    pipelines.create_pipeline(dpl_db, "dpl_errs", source="dpl_a", key="id", data="body")
    pipelines.create_pipeline(dpl_db, "dpl_failed", source="dpl_b", key="id", data="body")
    sync(dpl_db, "dpl_errs", embedder=picky)
    with psycopg.connect(dpl_db, autocommit=True) as conn:  # as pipeline_sync_failed records it
        conn.execute("UPDATE neuron_tasks.pipelines SET status = 'failed', last_error = %s, last_sync_at = now()"
                     " WHERE name = 'dpl_failed'", ["RuntimeError: " + EVIL + "x" * 3000])
    assert len(pipelines.pipeline_errors(dpl_db, "dpl_errs")) == 3
    with client(dpl_db) as c:
        page = c.get("/parts/pipelines").text
    rows = rows_of(page)
    assert status_in(rows["dpl_errs"]) == "PartialErrors" and 'ps-bad' in rows["dpl_errs"]
    assert status_in(rows["dpl_failed"]) == "Failed" and 'ps-bad' in rows["dpl_failed"]
    assert cells(rows["dpl_errs"])[8] == "3"
    assert EVIL not in page and "<script>alert" not in page
    assert str(markupsafe.escape(EVIL)) in page  # shown, escaped
    last_error = cells(rows["dpl_failed"])[10]
    assert "more characters" in last_error and len(last_error) < 400
    section = page[page.index('id="errors-dpl_errs"'):]
    section = section[:section.index("</table>")]
    assert "latest 3 of 3" in section
    keys = re.findall(r"<code>([^<]*)</code>", section)
    assert sorted(keys) == ["12", "4", "8"]
    assert section.count('<td class="num">1</td>') == 3  # attempts
    assert 'id="errors-dpl_failed"' not in page  # no per-record errors there


def test_sync_now_enqueues_exactly_one_job_and_needs_the_csrf_token(dpl_db: str) -> None:
    with psycopg.connect(dpl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO dpl_a VALUES (1, 'one')")
    pipelines.create_pipeline(dpl_db, "dpl_sync", source="dpl_a", key="id", data="body")

    def jobs() -> list[tuple]:
        with psycopg.connect(dpl_db) as conn:
            return conn.execute(
                "SELECT queue_name, actor_name, convert_from(payload, 'UTF8')::jsonb -> 'args', message_id"
                " FROM neuron_tasks.messages").fetchall()

    with client(dpl_db) as c:
        token = csrf(c.get("/parts/pipelines").text)
        assert c.post("/parts/pipelines/sync", data={"name": "dpl_sync"}).status_code == 403
        assert c.post("/parts/pipelines/sync", data={"name": "dpl_sync", "csrf": "forged"}).status_code == 403
        r = c.post("/parts/pipelines/sync", data={"name": "dpl_sync", "csrf": token},
                   headers={"origin": "http://evil.example"})
        assert r.status_code == 403
        assert jobs() == []
        r = c.post("/parts/pipelines/sync", data={"name": "no_such_pipeline", "csrf": token})
        assert r.status_code == 404 and "no_such_pipeline" in r.text
        assert jobs() == []
        r = c.post("/parts/pipelines/sync", data={"name": "dpl_sync", "csrf": token}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/parts/pipelines?done=sync")
        page = c.get(r.headers["location"]).text
    found = jobs()
    assert [(q, a, args) for q, a, args, _ in found] == [("pipelines", "neuron_tasks.pipeline_sync", ["dpl_sync"])]
    assert 'id="notice"' in page and "Sync of pipeline dpl_sync queued" in page and found[0][3] in page

    # with an access token: nothing without it, and never through GET
    with client(dpl_db, dashboard_token="s3cret") as c:
        assert c.post("/parts/pipelines/sync", data={"name": "dpl_sync", "csrf": token}).status_code == 401
        c.get("/parts/pipelines?token=s3cret")
        assert c.get("/parts/pipelines/sync", params={"name": "dpl_sync"}).status_code == 405
    assert len(jobs()) == 1


def test_large_pipelines_are_read_with_estimates_and_bounded_counts(
    dpl_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(dpl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO dpl_a SELECT g, 'doc ' || g FROM generate_series(1, 150) g")
        conn.execute("INSERT INTO dpl_b SELECT g, 'doc ' || g FROM generate_series(1, 20) g")
    pipelines.create_pipeline(dpl_db, "dpl_big", source="dpl_a", key="id", data="body")
    pipelines.create_pipeline(dpl_db, "dpl_big_done", source="dpl_b", key="id", data="body")
    sync(dpl_db, "dpl_big_done")
    with psycopg.connect(dpl_db, autocommit=True) as conn:
        conn.execute("ANALYZE dpl_a, dpl_b, dpl_big_done_embeddings")
    # every non-empty relation counts as too big to count: estimates, counts capped at 100
    monkeypatch.setattr(page_module, "EXACT_BYTES", 0)
    with client(dpl_db, dashboard_count_cap=100) as c:
        page = c.get("/parts/pipelines").text
    rows = rows_of(page)
    big = cells(rows["dpl_big"])
    assert big[3:9] == ["Stale", "100+", "~150", "0", "≤ 33%", "0"]
    done = cells(rows["dpl_big_done"])
    assert done[3:9] == ["UpToDate", "0", "~20", "~20", "~100%", "0"]
    assert {n: m["status"] for n, m in view(dpl_db).items()} == {n: status_in(r) for n, r in rows.items()}

    # a sync holding a pipeline's lock: Processing, from the bounded read and from the view alike
    with psycopg.connect(dpl_db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext('neuron_tasks.pipeline'), hashtext('dpl_big_done'))")
        with client(dpl_db, dashboard_count_cap=100) as c:
            assert status_in(rows_of(c.get("/parts/pipelines").text)["dpl_big_done"]) == "Processing"
        monkeypatch.setattr(page_module, "EXACT_BYTES", 16 * 1024 * 1024)
        with client(dpl_db) as c:
            exact = rows_of(c.get("/parts/pipelines").text)
        assert status_in(exact["dpl_big_done"]) == "Processing" == view(dpl_db)["dpl_big_done"]["status"]
    assert cells(exact["dpl_big"])[4:6] == ["150", "150"]


def test_status_from_bounded_reads_matches_the_view(dpl_db: str) -> None:
    """status_of (used for pipelines too big to count) follows pipeline_metrics' rules."""
    with psycopg.connect(dpl_db, autocommit=True) as conn:
        conn.execute("INSERT INTO dpl_a SELECT g, 'doc ' || g FROM generate_series(1, 10) g")
        conn.execute("INSERT INTO dpl_b SELECT g, CASE WHEN g = 2 THEN 'bad' ELSE 'ok' END"
                     " FROM generate_series(1, 3) g")
    pipelines.create_pipeline(dpl_db, "dpl_s1", source="dpl_a", key="id", data="body")
    pipelines.create_pipeline(dpl_db, "dpl_s2", source="dpl_b", key="id", data="body")
    pipelines.create_pipeline(dpl_db, "dpl_s3", source="dpl_c", key="id", data="body")
    sync(dpl_db, "dpl_s2", embedder=picky)
    sync(dpl_db, "dpl_s3")
    pool = make_pool(dpl_db, max_size=2)
    try:
        loaded = page_module.load(DashboardData(pool))
    finally:
        pool.close()
    truth = view(dpl_db)
    assert {r["name"]: page_module.status_of(r) for r in loaded.rows} == {n: m["status"] for n, m in truth.items()}
    assert {r["name"]: r["status"] for r in loaded.rows} == {"dpl_s1": "Stale", "dpl_s2": "PartialErrors",
                                                            "dpl_s3": "NoResults"}
    assert [e["key"] for e in loaded.errors["dpl_s2"]] == ["2"]


def test_a_locked_source_does_not_hang_the_page(dpl_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pipelines.create_pipeline(dpl_db, "dpl_locked", source="dpl_a", key="id", data="body")
    monkeypatch.setattr(page_module, "TIMEOUT_MS", 200)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(dpl_db) as conn:
            conn.execute("LOCK TABLE public.dpl_a IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert locked.wait(10)
        with client(dpl_db) as c:
            r = c.get("/parts/pipelines")
    finally:
        release.set()
        t.join(10)
    assert r.status_code == 200
    assert 'id="pipelines-problem"' in r.text and "within 200 ms" in r.text
    assert 'id="raw-tables"' in r.text


def test_without_the_pipeline_tables_the_page_stays_generic(dpl_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(page_module, "TABLES", (*page_module.TABLES, "neuron_tasks.not_landed_yet"))
    with client(dpl_db) as c:
        page = c.get("/parts/pipelines").text
    assert 'id="pipelines"' not in page and "<code>neuron_tasks.pipeline_backlog</code>" in page
