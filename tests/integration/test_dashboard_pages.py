"""The parts' pages and the queue pages read as an operator wants them: tenants' rate and tokens
against their limits, topics' slots in use, schedules' next and last fire, the LLM cache's hit
ratio, a message's arguments in the list, a finished message's result, what workers run now."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from html import unescape

import psycopg

from neuron_tasks.testing import truncate
from tests.integration.dashboard_helpers import client, enqueue


def row_of(html: str, attr: str, value: str) -> str:
    match = re.search(rf'<tr {attr}="{re.escape(value)}".*?</tr>', html, re.S)
    assert match, f"no row {attr}={value}"
    return re.sub(r"<[^>]+>", " ", unescape(match.group(0)))


def svgs(html: str) -> list[str]:
    return re.findall(r"<svg.*?</svg>", html, re.S)


def assert_charts_read_alone(html: str) -> None:
    for svg in svgs(html):
        assert re.search(r"<title>[^<]+</title>", svg) and 'class="chart-title"' in svg
        assert '<g class="legend">' in svg and 'class="legend-label"' in svg
        assert 'class="unit"' in svg, "the y axis names its unit"


def test_tenants_show_rate_and_tokens_against_their_limits(clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.tenants (name, qps, burst, tokens_per_minute, tokens_per_day)"
                     " VALUES ('acme', 2, 4, 1000, 50000), ('free', NULL, NULL, NULL, NULL)")
        conn.execute("INSERT INTO neuron_tasks.tenant_usage (tenant, minute, tokens, jobs) VALUES"
                     " ('acme', date_trunc('minute', now()) - interval '1 minute', 300, 90),"
                     " ('acme', date_trunc('minute', now()), 250, 10)")
        conn.execute("INSERT INTO neuron_tasks.tenant_buckets (tenant, tokens, refilled_at, throttled)"
                     " VALUES ('acme', 0, now(), 3)")
    with client(clean_db) as c:
        html = c.get("/parts/tenants").text
    acme = row_of(html, "data-tenant", "acme")
    assert "1.50 / s of 2" in acme, "90 jobs in the last full minute: 1.5 per second against a QPS of 2"
    assert "250 of 1,000" in acme and "of 50,000" in acme and " 3 " in acme  # 3 throttles, all time
    assert "<meter" in html and "neuron_tasks.tenant_usage" in html  # meters; the raw table one click away
    assert "1.50 / s" not in row_of(html, "data-tenant", "free")
    assert "\\u00" not in html and "bytes&gt;" not in html
    titles = [re.search(r"<title>([^<]+)</title>", s).group(1) for s in svgs(html)]  # type: ignore[union-attr]
    assert "Jobs per minute by tenant, last hour" in titles
    assert "Times throttled per minute by tenant, last hour" in titles
    assert_charts_read_alone(html)


def test_topics_show_slots_in_use_against_concurrency_and_waiting(clean_db: str) -> None:
    worker = uuid.uuid4()
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.topics (name, concurrency) VALUES ('render', 3), ('open', NULL)")
        running = enqueue(clean_db, "draw", [1], topic="render")
        conn.execute("UPDATE neuron_tasks.messages SET state = 'running', attempts = 1, started_at = now(),"
                     " lease_owner = %s, lease_expires_at = now() + interval '1 minute' WHERE id = %s",
                     (worker, running))
        conn.execute("INSERT INTO neuron_tasks.topic_slots (topic, slot, holder, acquired_at)"
                     " VALUES ('render', 1, %s, now()), ('render', 2, NULL, NULL)", (running,))
        for i in range(2):
            enqueue(clean_db, "draw", [i], topic="render")
    with client(clean_db) as c:
        html = c.get("/parts/topics").text
    render = row_of(html, "data-topic", "render")
    assert "1 of 3" in render
    assert re.search(r"\b2\b", render.split("1 of 3")[1]), "two messages wait"
    assert "no limit" in row_of(html, "data-topic", "open")
    assert_charts_read_alone(html)


def test_schedules_show_next_and_last_fire_leader_and_a_log_without_ticks(clean_db: str) -> None:
    node = uuid.uuid4()
    truncate(clean_db, "scheduler")
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.scheduler_nodes (node_id, host, pid, leader_since)"
                     " VALUES (%s, 'sched-host', 4242, now() - interval '1 hour')", (node,))
        conn.execute("INSERT INTO neuron_tasks.scheduler_jobs (name, kind, target, queue_name, trigger, next_fire,"
                     " node_id) VALUES ('nightly_report', 'actor', 'build_report', 'reports', 'cron 0 3 * * *',"
                     " '2030-01-02 03:00:00+00', %s), ('neuron_tasks.lease_sweeper', 'builtin', 'x:y', NULL,"
                     " 'every 10s', now() + interval '5 s', %s)", (node, node))
        conn.execute("INSERT INTO neuron_tasks.scheduler_fires (job, fire_time, node_id, message_id) VALUES"
                     " ('nightly_report', '2029-12-31 03:00:00+00', %(n)s, 'm-old'),"
                     " ('nightly_report', '2030-01-01 03:00:00+00', %(n)s, 'm-new')", {"n": node})
        conn.execute("INSERT INTO neuron_tasks.scheduler_fires (job, fire_time, node_id)"
                     " SELECT 'neuron_tasks.lease_sweeper', now() - g * interval '10 s', %s"
                     " FROM generate_series(1, 30) g", (node,))
    with client(clean_db) as c:
        html = c.get("/parts/schedules").text
    assert "sched-host:4242" in re.sub(r"<[^>]+>", "", html.split('id="leader"')[1].split("</p>")[0])
    job = row_of(html, "data-job", "nightly_report")
    assert "m-new" in job and " 2 " in job, "last fire with its message, and the fires kept"
    next_fire = re.search(r'class="nw next-fire"><time>([^<]+)</time>', html.split('data-job="nightly_report"')[1])
    assert next_fire and next_fire.group(1).startswith(("2030-01-01", "2030-01-02"))
    log = html.split('id="fire-log"')[1].split("</table>")[0]
    assert "lease_sweeper" not in log, "the per-second internal ticks stay out of the log"
    assert log.index("m-new") < log.index("m-old"), "newest first"
    assert "neuron_tasks.scheduler_fires" in html  # their rows are one click away


def test_llm_cache_shows_hit_ratio_size_against_limits_and_entries_per_model(clean_db: str) -> None:
    truncate(clean_db, "llm")
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.llm_cache (key, operation, model, input, value, bytes, hits, expires_at)"
                     " SELECT sha256(g::text::bytea), 'embed',"
                     " CASE WHEN g <= 3 THEN 'fake:small' ELSE 'fake:large' END,"
                     " jsonb_build_object('text', 'café ' || g), '\\x00'::bytea, 1024, g,"
                     " CASE WHEN g = 5 THEN now() - interval '1 s' ELSE now() + interval '1 day' END"
                     " FROM generate_series(1, 5) g")
        conn.execute("INSERT INTO neuron_tasks.llm_usage (tokens, cached, operation, model) VALUES"
                     " (10, true, 'embed', 'fake:small'), (10, true, 'embed', 'fake:small'),"
                     " (10, true, 'embed', 'fake:large'), (40, false, 'embed', 'fake:large')")
    with client(clean_db) as c:
        html = c.get("/parts/llm-cache").text
        raw = c.get("/parts/llm-cache?table=neuron_tasks.llm_cache").text
    assert re.search(r'id="hit-ratio">75.0 %<', html)
    assert re.search(r'id="cache-entries">5<', html) and "of 200,000 entries allowed" in html
    assert re.search(r'id="cache-expired">1<', html)
    small = row_of(html, "data-model", "fake:small")
    assert " 3 " in small and " 6 " in small, "3 entries with 6 hits"
    assert_charts_read_alone(html)
    assert "café" in unescape(raw) and "\\u00e9" not in raw and "bytes&gt;" not in raw, "keys in hex, text as text"


def test_message_list_shows_the_actors_arguments(clean_db: str) -> None:
    row = enqueue(clean_db, "send_email", ["zoë@example.com", {"subject": "Grüße"}, 3])
    with client(clean_db) as c:
        html = unescape(c.get("/messages").text)
    cell = re.search(rf'<tr data-id="{row}".*?<td class="args"><code>(.*?)</code>', html, re.S)
    assert cell and cell.group(1) == '"zoë@example.com", {"subject": "Grüße"}, 3'


def test_finished_message_shows_its_result(clean_db: str) -> None:
    key = hashlib.md5(b"neuron-tasks-results:default:add:done-7").hexdigest()
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.messages_history (id, message_id, queue_name, actor_name, priority,"
                     " attempts, retries, enqueued_at, started_at) VALUES (707, 'done-7', 'default', 'add', 0, 1, 0,"
                     " now() - interval '2 s', now() - interval '1 s')")
        conn.execute("INSERT INTO neuron_tasks.results (key, value, expires_at) VALUES (%s, %s, now() + interval"
                     " '1 hour')", (key, json.dumps({"sum": 42, "note": "ça va"}).encode()))
    with client(clean_db) as c:
        html = unescape(c.get("/messages/707").text)
    result = re.search(r'<pre id="result">(.*?)</pre>', html, re.S)
    assert result and json.loads(result.group(1)) == {"sum": 42, "note": "ça va"}


def test_workers_page_shows_what_each_worker_runs_now(clean_db: str) -> None:
    busy, idle = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.workers (worker_id, worker_name, host, pid) VALUES"
                     " (%s, 'w-busy', 'h1', 1), (%s, 'w-idle', 'h1', 2)", (busy, idle))
        row = enqueue(clean_db, "resize_image", ["cat.png", 800], queue="media")
        conn.execute("UPDATE neuron_tasks.messages SET state = 'running', attempts = 1,"
                     " started_at = now() - interval '90 s', lease_owner = %s,"
                     " lease_expires_at = now() + interval '1 minute' WHERE id = %s", (busy, row))
    with client(clean_db) as c:
        html = c.get("/workers").text
    job = row_of(html, "data-id", str(row))
    assert "w-busy" in job and "resize_image" in job and '"cat.png", 800' in job and "media" in job
    assert re.search(r"1m 3\ds", job), "running for about a minute and a half"
    assert "w-idle" not in html.split('id="busy"')[1].split("</table>")[0]
    assert re.search(r'id="jobs-running">1<', html) and re.search(r'id="workers-busy">1<', html)


def test_throttles_are_counted_per_minute_and_charted(clean_db: str) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.tenants (name, qps, burst) VALUES ('slow', 0.001, 1)")
        conn.execute("INSERT INTO neuron_tasks.tenant_throttles (tenant, minute, n)"
                     " VALUES ('slow', date_trunc('minute', now()) - interval '3 days', 7)")
        taken = [conn.execute("SELECT granted FROM neuron_tasks.tenant_take_v1('slow', 0.001, 1, 1)").fetchone()
                 for _ in range(4)]
        assert taken == [(1,), (0,), (0,), (0,)], "one token, then three throttles"
        counted = conn.execute("SELECT sum(n) FROM neuron_tasks.tenant_throttles WHERE tenant = 'slow'").fetchone()
    assert counted == (3,), "counted once each, and the minute of three days ago is gone (two days are kept)"
    with client(clean_db) as c:
        html = c.get("/parts/tenants").text
    chart = next(s for s in svgs(html) if "Times throttled per minute by tenant, last hour" in s)
    assert re.search(r"<title>\d\d:\d\d slow: 3</title>", chart), "this minute's bar holds the three throttles"


def test_llm_cache_removals_are_counted_per_hour(clean_db: str) -> None:
    truncate(clean_db, "llm")
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.llm_cache (key, operation, model, input, value, bytes, expires_at)"
                     " SELECT sha256(g::text::bytea), 'embed', 'fake:small', '{}', '\\x00'::bytea, 100,"
                     " now() - interval '1 s' FROM generate_series(1, 4) g")
        conn.execute("DELETE FROM neuron_tasks.llm_cache WHERE expires_at <= now()")  # what rotation's first step does
    with client(clean_db) as c:
        html = c.get("/parts/llm-cache").text
    assert re.search(r'id="cache-removed">4<', html)
    assert any("Entries removed per hour" in s for s in svgs(html))
