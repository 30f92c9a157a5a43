"""Dashboard page times with 1,000,000 messages (goal: every page < 200 ms; no full count).

    python bench/dashboard/run.py [--messages 1000000] [--history 200000] [--runs 15] [--keep]

Generates the rows with one INSERT ... SELECT generate_series into a separate database
(nt_dash_bench) on $NEURON_TASKS_DATABASE_URL's server (else the embedded one), serves the real
dashboard over HTTP (uvicorn in a thread) and times each page with httpx; then EXPLAINs every
dashboard statement to show that none reads the whole message table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from neuron_tasks import embedded
from neuron_tasks.core import migrate
from neuron_tasks.dashboard.server import BackgroundDashboard
from neuron_tasks.dashboard.settings import DashboardSettings
from neuron_tasks.db import make_pool

DB = "nt_dash_bench"

GENERATE = """
INSERT INTO neuron_tasks.messages
    (message_id, queue_name, actor_name, state, priority, eta, tenant, topic, attempts, retries,
     lease_owner, lease_expires_at, payload, enqueued_at, failed_at, last_error, errors)
SELECT md5(g::text),
       CASE WHEN g <= 3 THEN 'queue_small' ELSE 'queue_' || (g %% 5) END,
       CASE WHEN g <= 10 THEN 'rare_actor' ELSE (ARRAY['embed', 'rerank', 'send_email', 'resize'])[1 + g %% 4] END,
       s.state,
       g %% 3,
       now() - (%(n)s - g) * interval '1 millisecond',
       'tenant_' || (g %% 50),
       CASE WHEN g %% 10 = 0 THEN 'topic_' || (g %% 7) END,
       CASE WHEN s.state IN ('running', 'failed', 'retrying') THEN 1 ELSE 0 END,
       CASE WHEN s.state IN ('failed', 'retrying') THEN 1 ELSE 0 END,
       CASE WHEN s.state = 'running' THEN '00000000-0000-0000-0000-000000000001'::uuid END,
       CASE WHEN s.state = 'running' THEN now() + interval '1 hour' END,
       convert_to(json_build_object('queue_name', 'queue_' || (g %% 5), 'actor_name', 'embed',
           'args', json_build_array(g, CASE WHEN g = 77 THEN 'needle' ELSE 'document ' || g END),
           'kwargs', '{}'::json, 'options', '{}'::json, 'message_id', md5(g::text),
           'message_timestamp', 0)::text, 'UTF8'),
       now() - (%(n)s - g) * interval '1 millisecond',
       CASE WHEN s.state = 'failed' THEN now() - (g %% 3600) * interval '1 second' END,
       CASE WHEN s.state IN ('failed', 'retrying') THEN 'RuntimeError: failure ' || (g %% 100) END,
       CASE WHEN s.state IN ('failed', 'retrying') THEN jsonb_build_array(jsonb_build_object(
           'at', extract(epoch FROM now()), 'attempt', 1, 'type', 'RuntimeError',
           'message', 'failure ' || (g %% 100), 'traceback', repeat('  File "x.py", line 1, in f\n', 20)))
            ELSE '[]'::jsonb END
FROM generate_series(1, %(n)s) AS g
CROSS JOIN LATERAL (SELECT CASE WHEN g / 5 %% 200 = 1 THEN 'running'
                                WHEN g / 5 %% 20 = 2 THEN 'failed'
                                WHEN g / 5 %% 20 = 3 THEN 'retrying'
                                ELSE 'pending' END AS state) s
"""

HISTORY = """
INSERT INTO neuron_tasks.messages_history
    (id, message_id, queue_name, actor_name, tenant, priority, attempts, retries, enqueued_at, started_at,
     finished_at)
SELECT 10000000 + g, md5((-g)::text), 'queue_' || (g %% 5), 'embed', 'tenant_' || (g %% 50), 0, 1, 0,
       now() - (g %% 3600) * interval '1 second' - interval '50 ms',
       now() - (g %% 3600) * interval '1 second' - interval '20 ms',
       now() - (g %% 3600) * interval '1 second'
FROM generate_series(1, %(n)s) AS g
"""

WORKERS = """
INSERT INTO neuron_tasks.workers (worker_id, worker_name, host, pid, queues, heartbeat_at, jobs_processed,
                                  runtime_ms)
SELECT gen_random_uuid(), 'worker-' || g, 'host-' || (g % 3), 1000 + g, ARRAY['queue_' || (g % 5)], now(),
       g * 1000, g * 5000.0
FROM generate_series(1, 20) AS g
"""


def prepare(server: str, messages: int, history: int) -> str:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB}"')
    url = make_conninfo(server, dbname=DB)
    migrate.upgrade(url)
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(GENERATE, {"n": messages})
        conn.execute(HISTORY, {"n": history})
        conn.execute(WORKERS)
        conn.execute("VACUUM ANALYZE neuron_tasks.messages")
        conn.execute("VACUUM ANALYZE neuron_tasks.messages_history")
    print(f"generated {messages:,} messages and {history:,} history rows in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    return url


def pages(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        dead = conn.execute("SELECT id FROM neuron_tasks.messages WHERE state = 'failed' ORDER BY id DESC LIMIT 1"
                            ).fetchone()[0]
        mid = conn.execute("SELECT max(id) / 2 FROM neuron_tasks.messages").fetchone()[0]
    return [
        "/", "/messages", "/messages?queue=queue_3", "/messages?state=failed", "/messages?tenant=tenant_7",
        "/messages?topic=topic_3", "/messages?q=needle", "/messages?actor=rare_actor", f"/messages?before={mid}",
        f"/messages/{dead}", f"/messages/{mid}", "/messages/nonexistent-message-id", "/dead-letters",
        "/dead-letters?queue=queue_2&actor=embed", "/dead-letters?q=failure%2042", "/workers", "/parts/tenants",
        "/parts/indexes", "/parts/pipelines", "/metrics", "/healthz",
    ]


def time_pages(base: str, paths: list[str], runs: int) -> list[dict[str, object]]:
    out = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for path in paths:
            for _ in range(2):
                r = client.get(path)
                assert r.status_code in (200, 404), (path, r.status_code)
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                r = client.get(path)
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            out.append({"page": path, "status": r.status_code, "median_ms": round(statistics.median(times), 1),
                        "p90_ms": round(times[int(0.9 * (len(times) - 1))], 1), "max_ms": round(times[-1], 1),
                        "bytes": len(r.content)})
    return out


def explain_all(url: str) -> dict[str, list[str]]:
    """Plans of the dashboard's statements: which scan nodes touch neuron_tasks.messages."""
    from neuron_tasks.sql import q

    params = {"cap": 10_000, "queues": ["queue_0", "queue_1"], "minutes": 60, "before": 2**62, "window": 20_000,
              "limit": 50, "since": datetime.now(UTC) - timedelta(hours=1),
              "queue": None, "state": None, "actor": "embed", "tenant": None, "topic": None,
              "text": None, "after_at": None, "after_id": None, "stale_s": 30, "id": 1, "message_id": "x",
              "table": "neuron_tasks.messages", "ids": [1, 2]}
    names = ["dash_queue_names", "dash_queue_counts", "dash_finished_per_minute",
             "dash_failed_per_minute", "dash_messages_window", "dash_window_floor",
             "dash_message_by_id", "dash_message_by_message_id", "dash_history_by_id", "dash_dead_letters",
             "dash_dead_letter_ids", "dash_workers_table", "dash_workers_alive"]
    out: dict[str, list[str]] = {}
    with psycopg.connect(url) as conn:
        for name in names:
            plan = conn.execute("EXPLAIN (FORMAT JSON) " + q(name), params).fetchone()[0]
            nodes: list[str] = []

            def walk(node: dict[str, object], acc: list[str] = nodes) -> None:
                if node.get("Relation Name") == "messages":
                    acc.append(f"{node['Node Type']}" + (f" on {node['Index Name']}" if node.get("Index Name") else ""))
                for child in node.get("Plans", []) or []:  # type: ignore[attr-defined]
                    walk(child)

            walk(plan[0]["Plan"])
            out[name] = sorted(set(nodes))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--history", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    server = os.environ.get("NEURON_TASKS_DATABASE_URL") or embedded.start(None)
    url = prepare(server, args.messages, args.history)
    pool = make_pool(url, max_size=4, name="neuron_tasks-dashboard-bench")
    dash = BackgroundDashboard(pool, DashboardSettings(dashboard_port=0))
    base = dash.start()
    try:
        results = time_pages(base, pages(url), args.runs)
        plans = explain_all(url)
    finally:
        dash.stop()
        pool.close()
        if not args.keep:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    if args.json:
        print(json.dumps({"pages": results, "plans": plans}, indent=2))
        return
    print("| page | median ms | p90 ms | max ms | goal 200 ms |\n|---|---|---|---|---|")
    for r in results:
        mark = "met" if float(r["median_ms"]) < 200 else "MISSED"  # type: ignore[arg-type]
        print(f"| `{r['page']}` | {r['median_ms']} | {r['p90_ms']} | {r['max_ms']} | {mark} |")
    print("\nScans of neuron_tasks.messages per statement:")
    for name, nodes in plans.items():
        print(f"- {name}: {', '.join(nodes) or 'none'}")


if __name__ == "__main__":
    main()
