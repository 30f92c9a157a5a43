"""Measurements of our broker alone: a deep backlog (10k vs 1M) and topic limits.

``backlog``: fill the queue with ``backlog_small`` then ``backlog_size`` pending
messages (SQL ``INSERT ... SELECT generate_series``, then ``VACUUM (ANALYZE)`` as
autovacuum would have done for a backlog built over time) and, at each level,
time what grows with the backlog's size: ``send()``, ``SELECT
neuron_tasks.enqueue(...)``, the producer's depth check, ``neuron-tasks status``
and the dashboard's overview. Each is called through the project's own code, so
whatever SQL it runs today is what gets timed. With ``explain=1`` the plans of
those statements at the largest level are captured with PostgreSQL's
``auto_explain`` (ANALYZE, BUFFERS, nested statements included) on the
connection that runs them.

``topics``: drain a backlog of ``topic_messages`` with one worker process x 8
threads, messages of a topic with concurrency 8 vs the same messages without a
topic, for a no-op job and a 10 ms job.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import harness
import psycopg

QUEUE = harness.QUEUE
TOPIC = "bench_c8"
TOPIC_CONCURRENCY = 8

FILL_SQL = """
INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, payload)
SELECT m.id, %(queue)s::text, 'noop',
       convert_to(json_build_object(
           'queue_name', %(queue)s::text, 'actor_name', 'noop', 'args', json_build_array(g),
           'kwargs', '{}'::json, 'options', '{}'::json, 'message_id', m.id,
           'message_timestamp', (extract(epoch FROM now()) * 1000)::bigint)::text, 'UTF8')
FROM generate_series(%(start)s::bigint, %(stop)s::bigint - 1) AS g,
     LATERAL (SELECT gen_random_uuid()::text AS id) AS m
"""
SQL_ENQUEUE = "SELECT neuron_tasks.enqueue(%(queue)s, 'noop', jsonb_build_array(%(i)s::int))"
FILL_CHUNK = 200_000
AUTO_EXPLAIN = (
    "LOAD 'auto_explain'",
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_analyze = on",
    "SET auto_explain.log_buffers = on",
    "SET auto_explain.log_timing = on",
    "SET auto_explain.log_nested_statements = on",
    "SET auto_explain.log_level = notice",
    "SET client_min_messages = notice",
)


def _ms_stats(values: list[float]) -> dict[str, Any]:
    return {
        "median_ms": round(statistics.median(values), 3),
        "worst_ms": round(max(values), 3),
        "calls": len(values),
    }


def _timed(fn: Callable[[int], object], calls: int) -> dict[str, Any]:
    values = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        values.append((time.perf_counter() - t0) * 1000.0)
    return _ms_stats(values)


def _fill(url: str, start: int, stop: int) -> float:
    """Pending messages start..stop-1 in chunks, then VACUUM (ANALYZE); returns seconds."""
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for a in range(start, stop, FILL_CHUNK):
            conn.execute(FILL_SQL, {"queue": QUEUE, "start": a, "stop": min(a + FILL_CHUNK, stop)})  # type: ignore[arg-type]
        conn.execute("VACUUM (ANALYZE) neuron_tasks.messages")
    return time.perf_counter() - t0


@contextmanager
def _explaining(conn: psycopg.Connection[Any], sink: list[str]) -> Iterator[None]:
    """auto_explain's plans of everything ``conn`` runs meanwhile, appended to ``sink``.

    ``conn`` may be the only connection of a pool (max_size=1): it is not held meanwhile.
    """

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        text = diag.message_primary or ""
        if "plan:" in text[:80]:
            sink.append(text)

    for stmt in AUTO_EXPLAIN:
        conn.execute(stmt)  # type: ignore[arg-type]
    conn.add_notice_handler(on_notice)
    try:
        yield
    finally:
        conn.remove_notice_handler(on_notice)
        conn.execute("SET auto_explain.log_min_duration = -1")


@contextmanager
def _explaining_pool(pool: Any, sink: list[str]) -> Iterator[None]:
    """``_explaining`` on the single connection of ``pool`` (max_size=1), not held meanwhile."""
    with pool.connection() as conn:
        cm = _explaining(conn, sink)
        cm.__enter__()
    try:
        yield
    finally:
        with pool.connection() as conn2:
            assert conn2 is conn, "the explain pool must hold a single connection"
            cm.__exit__(None, None, None)


def _depth_check(broker: Any, pool: Any, depth: int) -> tuple[Callable[[int], object], str]:
    """The producer's exact queue-depth check (what a send runs when its cached count is stale)."""
    producer = getattr(broker, "producer", None)
    if hasattr(producer, "reserve_depth") and isinstance(getattr(broker, "_depth", None), dict):

        def reserve(_: int) -> None:
            with broker._depth_lock:
                broker._depth.clear()  # force the exact check
            producer.reserve_depth(QUEUE, 1)

        return reserve, "broker.producer.reserve_depth, its cached count cleared before each call"
    if hasattr(broker, "_reserve_depth") and isinstance(getattr(broker, "_depth", None), dict):

        def reserve_old(_: int) -> None:
            broker._depth.clear()
            broker._reserve_depth(QUEUE, 1)

        return reserve_old, "PostgresBroker._reserve_depth, its cached count cleared before each call"
    from neuron_tasks.sql import q

    def waiting_count(_: int) -> None:
        with pool.connection() as conn:
            conn.execute(q("waiting_count"), {"queue_name": QUEUE, "limit": depth}).fetchone()

    return waiting_count, "the waiting_count statement"


@contextmanager
def _broker_on(broker: Any, pool: Any) -> Iterator[None]:
    """The broker's statements on ``pool`` meanwhile (to capture their plans)."""
    if not hasattr(broker, "_pool"):
        yield
        return
    saved = broker.pool
    broker._pool = pool
    try:
        yield
    finally:
        broker._pool = saved


def measure_backlog(system: harness.System) -> dict[str, Any]:
    from neuron_tasks.core.admin import Repo
    from neuron_tasks.dashboard.data import DashboardData
    from neuron_tasks.db import make_pool

    opts = system.opts
    small = opts.extra_int("backlog_small", 10_000)
    large = opts.extra_int("backlog_size", 1_000_000)
    calls = opts.extra_int("backlog_calls", 200)
    reads = opts.extra_int("backlog_reads", 20)
    explain = opts.extra.get("explain") == "1"
    # A deployment holding a backlog of `large` must allow it: queue_depth = 2 x the largest level.
    depth = 2 * max(large, small)
    os.environ["NEURON_TASKS_QUEUE_DEPTH"] = str(depth)
    system.setup()  # fresh database and schema, broker built (with the depth above)
    try:
        from neuron_tasks.dashboard.settings import DashboardSettings

        ds = DashboardSettings()
        dash_kwargs = {"count_cap": ds.dashboard_count_cap, "window": ds.dashboard_scan_window,
                       "stale_s": ds.dashboard_stale_s}
    except Exception:  # an older or newer settings class: the constructor's defaults
        dash_kwargs = {}
    url = opts.db_url
    pool = make_pool(url, max_size=1, name="bench-backlog")
    repo = Repo(pool)
    dash = DashboardData(pool, **dash_kwargs)
    sql_conn = psycopg.connect(url, autocommit=True)
    sql_conn.execute(f"SET neuron_tasks.queue_depth = '{depth}'")  # type: ignore[arg-type]
    actor: Any = getattr(system, "actor")  # noqa: B009 - DramatiqSystem's property
    broker: Any = getattr(system, "broker")  # noqa: B009 - DramatiqSystem's property
    depth_check, depth_how = _depth_check(broker, pool, depth)

    def status(_: int) -> None:
        repo.queue_status()
        repo.workers()

    def overview(_: int) -> None:
        dash.overview()

    def sql_enqueue(i: int) -> None:
        sql_conn.execute(SQL_ENQUEUE, {"queue": QUEUE, "i": i}).fetchone()  # type: ignore[arg-type]

    probes: list[tuple[str, Callable[[int], object], int]] = [
        ("send() (one message)", lambda i: actor.send(i), calls),
        ("SELECT neuron_tasks.enqueue(...)", sql_enqueue, calls),
        ("producer depth check", depth_check, reads),
        ("neuron-tasks status (queue_status + workers)", status, reads),
        ("dashboard overview", overview, reads),
    ]
    levels: dict[str, dict[str, Any]] = {}
    filled = 0
    try:
        for level in (small, large):
            fill_s = _fill(url, filled, level)
            filled = level
            waiting = sql_conn.execute(
                "SELECT count(*) FROM neuron_tasks.messages WHERE state IN ('pending', 'retrying')"
            ).fetchone()
            row: dict[str, Any] = {"fill_seconds": round(fill_s, 2),
                                   "waiting_at_start": waiting[0] if waiting else None}
            for name, fn, n in probes:
                try:
                    for i in range(3):  # warm-up: pools open, plans cached
                        fn(-1 - i)
                    row[name] = _timed(fn, n)
                except Exception as e:  # one probe's failure is reported in its cell
                    row[name] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]}
            levels[str(level)] = row
        out: dict[str, Any] = {"levels": levels, "small": small, "large": large, "queue_depth": depth,
                               "probes": [p[0] for p in probes], "depth_check": depth_how}
        if explain:
            plans: dict[str, list[str]] = {}
            for name, fn in (("producer depth check", depth_check), ("neuron-tasks status", status),
                             ("dashboard overview", overview)):
                sink: list[str] = []
                with _explaining_pool(pool, sink), _broker_on(broker, pool):
                    try:
                        fn(0)
                    except Exception as e:
                        sink.append(f"failed: {type(e).__name__}: {e}")
                plans[name] = sink
            sink = []
            with _explaining(sql_conn, sink):
                sql_enqueue(0)
            plans["SELECT neuron_tasks.enqueue(...)"] = sink
            out["explain"] = plans
        return out
    finally:
        sql_conn.close()
        pool.close()


def measure_topics(system: harness.System) -> dict[str, Any]:
    from neuron_tasks.core.topics import set_topic

    n = system.opts.extra_int("topic_messages", 2000)
    timeout = system.opts.timeout_s
    out: dict[str, Any] = {"n": n, "topic_concurrency": TOPIC_CONCURRENCY}
    for job in ("noop", "sleep10"):
        for mode in ("unlimited", "topic"):
            system.setup()
            broker: Any = getattr(system, "broker")  # noqa: B009 - DramatiqSystem's property
            options: dict[str, Any] = {}
            if mode == "topic":
                set_topic(broker.pool, TOPIC, concurrency=TOPIC_CONCURRENCY)
                options["topic"] = TOPIC
            actor = broker.get_actor(job)
            for start in range(0, n, 1000):
                broker.enqueue_many(
                    [actor.message_with_options(args=(i,), **options) for i in range(start, min(start + 1000, n))]
                )
            group = system.launch_workers(1, 8)
            t0 = time.perf_counter()
            group.go()
            try:
                t1 = harness.wait_drained(system, group, timeout, n)
            finally:
                group.stop()
            out[f"{job}_{mode}"] = round(n / (t1 - t0), 1)
            if (p := system.problems()) is not None:
                out.setdefault("warnings", []).append(f"{job} {mode}: {p}")
        out[f"{job}_ratio"] = round(out[f"{job}_topic"] / out[f"{job}_unlimited"], 3)
    return out
