"""The dashboard's pages, dead-letter actions, /metrics and /healthz on a real PostgreSQL."""

from __future__ import annotations

import re
import time
import uuid
from html import unescape

import dramatiq
import psycopg
import pytest

from neuron_tasks import PostgresBroker
from neuron_tasks.dashboard.data import DashboardData
from neuron_tasks.db import make_pool
from neuron_tasks.sql import queries
from tests.integration.dashboard_helpers import client, csrf, enqueue, kill, states


def test_overview_shows_queues_by_state_charts_and_workers(clean_db: str) -> None:
    for i in range(3):
        enqueue(clean_db, "add", [i], queue="alpha")
    kill(clean_db, enqueue(clean_db, "add", [9], queue="beta"))
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.workers (worker_id, worker_name, host, pid) VALUES (%s, 'w1', 'h', 1)",
                     (uuid.uuid4(),))
        conn.execute("INSERT INTO neuron_tasks.messages_history (id, message_id, queue_name, actor_name, priority,"
                     " attempts, retries, enqueued_at) VALUES (100, 'm', 'gamma', 'add', 0, 1, 0, now())")
    with client(clean_db) as c:
        html = c.get("/").text
    assert re.search(r'id="total-pending">3<', html)
    assert re.search(r'id="total-failed">1<', html)
    assert re.search(r'id="total-finished">1<', html)
    assert re.search(r'id="workers-alive">1<', html)
    for queue in ("alpha", "beta", "gamma"):
        assert f'data-queue="{queue}"' in html
    assert html.count("<svg") == 3 and "Finished per minute" in html and "Dead-lettered per minute" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no CDN, nothing remote


def test_queue_counts_above_the_cap_are_exact(clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, payload)"
                     " SELECT gen_random_uuid()::text, 'big', 'add', '\\x7b7d' FROM generate_series(1, 250)")
    with client(clean_db, dashboard_count_cap=100) as c:
        html = c.get("/").text
    assert re.search(r'id="total-pending">250<', html), "live counts come from the database's counters, exact"


def test_message_list_filters_and_keyset_paging(clean_db: str) -> None:
    ids = [enqueue(clean_db, "add", [i, f"needle-{i}" if i % 7 == 0 else "hay"], queue="q1" if i % 2 else "q2",
                   tenant="acme" if i % 3 == 0 else "other", topic="t1" if i < 10 else "t2") for i in range(40)]
    kill(clean_db, ids[5])
    with client(clean_db, dashboard_page_size=10, dashboard_scan_window=100) as c:
        def ids_on(url: str) -> list[int]:
            return [int(x) for x in re.findall(r'<tr data-id="(\d+)"', c.get(url).text)]

        assert ids_on("/messages") == sorted(ids, reverse=True)[:10]
        assert all(i % 2 for i in [ids.index(x) for x in ids_on("/messages?queue=q1")])
        assert ids_on("/messages?state=failed") == [ids[5]]
        assert ids_on("/messages?actor=nope") == []
        assert {ids.index(x) % 3 for x in ids_on("/messages?tenant=acme")} == {0}
        assert set(ids_on("/messages?topic=t1")) == set(ids[:10])
        assert set(ids_on("/messages?q=needle")) == {ids[i] for i in range(40) if i % 7 == 0}
        # keyset paging: each next link continues below the last id, no overlap, no gap
        seen: list[int] = []
        url: str | None = "/messages"
        while url:
            html = c.get(url).text
            seen += [int(x) for x in re.findall(r'<tr data-id="(\d+)"', html)]
            found = re.search(r'href="(/messages\?[^"]*before=\d+)" id="older"', html)
            url = found.group(1).replace("&amp;", "&") if found else None
        assert seen == sorted(ids, reverse=True)
    for name, text in queries().items():
        assert "OFFSET" not in text.upper(), f"{name} pages by OFFSET"


def test_selective_filter_scans_windows_within_a_budget(clean_db: str) -> None:
    first = enqueue(clean_db, "rare", [1])
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, payload)"
                     " SELECT gen_random_uuid()::text, 'default', 'common', '\\x7b7d' FROM generate_series(1, 3000)")
    pool = make_pool(clean_db, max_size=2)
    try:
        data = DashboardData(pool, window=100)
        from neuron_tasks.dashboard.data import MessageFilter

        page = data.messages(MessageFilter(actor="rare"), before=None, limit=10, budget_ms=60_000)
        assert [r["id"] for r in page.rows] == [first] and page.next_before is None
        cut = data.messages(MessageFilter(actor="rare"), before=None, limit=10, budget_ms=0)
        assert cut.rows == [] and cut.next_before is not None  # stopped early, says where to go on
    finally:
        pool.close()


def test_message_page_shows_args_options_errors_and_timeline(clean_db: str) -> None:
    row = enqueue(clean_db, "add", [1, {"doc": "x"}], tenant="acme", priority=3)
    kill(clean_db, row, errors=[
        {"at": 1_790_000_000, "attempt": 1, "type": "KeyError", "message": "first", "traceback": "TB-ONE"},
        {"at": 1_790_000_100, "attempt": 2, "type": "ValueError", "message": "second", "traceback": "TB-TWO"}])
    with psycopg.connect(clean_db) as conn:
        message_id = conn.execute("SELECT message_id FROM neuron_tasks.messages WHERE id = %s", (row,)).fetchone()[0]
    with client(clean_db) as c:
        html = unescape(c.get(f"/messages/{row}").text)
        assert c.get(f"/messages/{message_id}").text.count("TB-TWO") == 1
        assert c.get("/messages/123456789").status_code == 404
        with psycopg.connect(clean_db, autocommit=True) as conn:
            conn.execute("INSERT INTO neuron_tasks.messages_history (id, message_id, queue_name, actor_name, priority,"
                         " attempts, retries, enqueued_at, started_at) VALUES (777, 'done-1', 'default', 'add', 0, 1,"
                         " 0, now() - interval '2 s', now() - interval '1 s')")
        finished = c.get("/messages/done-1").text
    assert '"doc": "x"' in html and "acme" in html and '"tenant"' in html
    assert "TB-ONE" in html and "TB-TWO" in html and "Errors (2)" in html
    assert html.index("attempt 1 failed: KeyError") < html.index("attempt 2 failed: ValueError") < html.index(
        "dead-lettered")
    assert "finished" in finished and "No arguments were kept" in finished and "No result stored" in finished


def _action(c, page: str, **form: object) -> str:  # type: ignore[no-untyped-def]
    token = csrf(c.get(page).text)
    return c.post("/dead-letters/action", data={"csrf": token, **form}).text


def test_dead_letters_requeue_and_delete_one_selection_and_all_matching(clean_db: str) -> None:
    rows = [enqueue(clean_db, "add", [i], queue="dq" if i < 6 else "other", tenant="t1" if i < 3 else "t2")
            for i in range(9)]
    for r in rows:
        kill(clean_db, r)
    with client(clean_db) as c:
        html = c.get("/dead-letters").text
        assert all(f'data-id="{r}"' in html for r in rows)
        assert re.findall(r'<tr data-id="(\d+)"', c.get("/dead-letters?queue=other").text) == [
            str(r) for r in reversed(rows[6:])]
        assert "Nothing selected" in _action(c, "/dead-letters", action="requeue")
        out = _action(c, "/dead-letters", requeue_one=str(rows[0]))
        assert "Requeued 1 dead letter" in out and states(clean_db)[rows[0]] == "pending"
        out = _action(c, "/dead-letters", action="requeue", ids=[str(rows[1]), str(rows[2])])
        assert "Requeued 2" in out
        out = _action(c, "/dead-letters", delete_one=str(rows[3]))
        assert "Deleted 1" in out and rows[3] not in states(clean_db)
        out = _action(c, "/dead-letters", action="delete", ids=[str(rows[4])])
        assert rows[4] not in states(clean_db)
        assert "Tick" in _action(c, "/dead-letters?queue=dq", scope="all", action="requeue", queue="dq")
        out = _action(c, "/dead-letters?queue=dq", scope="all", action="requeue", queue="dq", confirm="yes")
        assert "Requeued 1" in out and states(clean_db)[rows[5]] == "pending"
        out = _action(c, "/dead-letters?tenant=t2", scope="all", action="delete", tenant="t2", confirm="yes")
        assert "Deleted 3" in out and not set(rows[6:]) & set(states(clean_db))


def test_requeued_dead_letter_runs(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    url = broker.url
    done: list[int] = []

    @dramatiq.actor(queue_name="dash_runs", max_retries=0)
    def dash_job(n: int) -> None:
        done.append(n)

    row = enqueue(url, "dash_job", [41], queue="dash_runs", failed=True)
    kill(url, row)  # with its error entries
    with client(url) as c:
        _action(c, "/dead-letters", requeue_one=str(row))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not done:
        time.sleep(0.05)
    assert done == [41]


def test_workers_page_lists_processes_once(clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.workers (worker_id, worker_name, host, pid, queues, heartbeat_at,"
                     " jobs_processed, runtime_ms) VALUES (%s, 'w-fresh', 'host-a', 11, '{default}', now(), 4, 40),"
                     " (%s, 'w-old', 'host-b', 12, '{}', now() - interval '10 minutes', 0, 0)",
                     (uuid.uuid4(), uuid.uuid4()))
    with client(clean_db) as c:
        html = c.get("/workers").text
    assert "w-fresh" in html and "host-a" in html and "w-old" in html
    assert "badge w-running" in html and "badge w-stale" in html
    assert "worker_status()" not in html, "one table of workers, not a second raw dump"
    assert 'id="idle"' in html, "nothing runs: the page says so"


def test_parts_not_installed_say_so_and_installed_tables_page_by_key(
    clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neuron_tasks.core import parts
    from neuron_tasks.core.parts import Page, Part

    # A part whose table does not exist in this database must say so plainly.
    later = Part("future", pages=(Page("future", "Future", "not installed",
                                        tables=("neuron_tasks.pipelines", "neuron_tasks.not_landed_yet")),))
    known = parts.pages()
    monkeypatch.setattr(parts, "pages", lambda: {**known, "future": (later, later.pages[0])})
    with client(clean_db) as c:
        for slug in ("tenants", "topics", "schedules", "indexes", "llm-cache", "pipelines"):
            r = c.get(f"/parts/{slug}")
            assert r.status_code == 200, slug
            assert "Not installed yet" not in r.text, slug
        future = c.get("/parts/future").text
        assert c.get("/parts/nope").status_code == 404
    assert "Not installed yet" in future and "neuron_tasks.not_landed_yet" in future
    assert "neuron_tasks.pipelines" in future
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.dash_keyed, public.dash_heap")
        conn.execute("CREATE TABLE public.dash_keyed (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO public.dash_keyed SELECT g, 'n' || g FROM generate_series(1, 25) g")
        conn.execute("CREATE TABLE public.dash_heap (note text, blob bytea)")
        conn.execute("INSERT INTO public.dash_heap SELECT 'h' || g, '\\x00ff' FROM generate_series(1, 25) g")
    pool = make_pool(clean_db, max_size=2)
    try:
        data = DashboardData(pool)
        for table in ("public.dash_keyed", "public.dash_heap"):
            seen, after = [], None
            while True:
                page = data.table_page(table, after=after, limit=10)
                seen += [r["note"] for r in page["rows"]]
                after = page["next_after"]
                if after is None:
                    break
            assert len(seen) == len(set(seen)) == 25, table
        assert data.table_page("public.dash_keyed", after="not-a-number", limit=10)["rows"] == []
    finally:
        pool.close()


def test_metrics_and_healthz(clean_db: str) -> None:
    enqueue(clean_db, "add", [1], queue="m1")
    kill(clean_db, enqueue(clean_db, "add", [2], queue="m1"))
    with client(clean_db) as c:
        body = c.get("/metrics")
        health = c.get("/healthz")
    text = body.text
    assert body.headers["content-type"].startswith("text/plain")
    assert 'neuron_tasks_queue_messages{queue="m1",state="pending"} 1.0' in text
    assert 'neuron_tasks_queue_messages{queue="m1",state="failed"} 1.0' in text
    assert 'neuron_tasks_dead_letters{queue="m1"} 1.0' in text
    assert 'neuron_tasks_oldest_pending_age_seconds{queue="m1"}' in text
    assert "neuron_tasks_workers_alive 0.0" in text and "neuron_tasks_database_up 1.0" in text
    assert health.status_code == 200 and health.text == "ok\n"


def test_metrics_export_tuner_gauges_when_indexes_exist(clean_db: str) -> None:
    pool = make_pool(clean_db, max_size=2)
    try:
        if not DashboardData(pool).exists("neuron_tasks.vector_indexes"):
            pytest.skip("neuron_tasks.vector_indexes is not installed in this database")
    finally:
        pool.close()
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("DELETE FROM neuron_tasks.vector_indexes WHERE name = 'dash_ix'")
        conn.execute("INSERT INTO neuron_tasks.vector_indexes (name, space, dim, ef_search, live_count, deleted_count)"
                     " VALUES ('dash_ix', 'l2', 4, 64, 75, 25)")
    try:
        with client(clean_db) as c:
            text = c.get("/metrics").text
            page = c.get("/parts/indexes").text
        assert 'neuron_tasks_index_ef_search{index="dash_ix"} 64.0' in text
        assert 'neuron_tasks_index_fragmentation{index="dash_ix"} 0.25' in text
        assert "dash_ix" in page
    finally:
        with psycopg.connect(clean_db, autocommit=True) as conn:
            conn.execute("DELETE FROM neuron_tasks.vector_indexes WHERE name = 'dash_ix'")


def test_demo_phase_prints_the_url_and_does_not_wait_without_a_terminal(clean_db: str) -> None:
    import io

    from rich.console import Console

    from neuron_tasks.config import Settings
    from neuron_tasks.dashboard import commands as command

    out = io.StringIO()
    from neuron_tasks.core import parts

    assert parts.demos()[-1].run == "neuron_tasks.dashboard.commands:demo_phase"  # the last phase
    started = time.monotonic()
    assert command.demo_phase(clean_db, Settings(database_url=clean_db), Console(file=out, width=200)) is True
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/", out.getvalue())
    assert time.monotonic() - started < 30  # stdin is not a TTY under pytest: no wait for Ctrl-C


def test_dead_letter_pages_follow_the_keyset_through_filtered_windows(clean_db: str) -> None:
    from neuron_tasks.dashboard.data import MessageFilter

    rows = [enqueue(clean_db, "rare" if i % 60 == 0 else "common", [i], failed=True) for i in range(300)]
    pool = make_pool(clean_db, max_size=2)
    try:
        data = DashboardData(pool, window=100)
        for flt, limit, expect in ((MessageFilter(), 50, rows), (MessageFilter(actor="rare"), 2, rows[::60])):
            seen: list[int] = []
            cursor = None
            for _ in range(100):
                page, cursor = data.dead_letters(flt, after=cursor, limit=limit, budget_ms=60_000)
                seen += [r["id"] for r in page]
                if cursor is None:
                    break
            assert sorted(seen) == sorted(expect) and len(seen) == len(set(seen))
        _, cut = data.dead_letters(MessageFilter(actor="nobody"), after=None, limit=10, budget_ms=0)
        assert cut is not None  # the time budget stopped it; the page offers to go on
    finally:
        pool.close()


def test_throughput_per_minute_reads_completed_minutes_once(clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.messages_history (id, message_id, queue_name, actor_name, priority,"
                     " attempts, retries, enqueued_at, finished_at) SELECT g, 'h' || g, 'default', 'add', 0, 1, 0,"
                     " now() - interval '10 minutes', date_trunc('minute', now()) - interval '5 minutes'"
                     " FROM generate_series(1, 7) g")
    kill(clean_db, enqueue(clean_db, "add", [1]))
    pool = make_pool(clean_db, max_size=2)
    try:
        data = DashboardData(pool)
        first = data.throughput(60)
        assert len(first) == 60 and [m["finished"] for m in first].count(7) == 1
        assert sum(m["finished"] for m in first) == 7 and sum(m["failed"] for m in first) == 1
        with psycopg.connect(clean_db, autocommit=True) as conn:  # a completed minute is not read again
            conn.execute("DELETE FROM neuron_tasks.messages_history")
        assert sum(m["finished"] for m in data.throughput(60)) == 7
        assert sum(m["finished"] for m in DashboardData(pool).throughput(60)) == 0
    finally:
        pool.close()
