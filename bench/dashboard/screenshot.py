"""docs/dashboard.png: the overview of a database with a realistic last hour, shot in headless
Debian chromium (Playwright, no browser download).

    python bench/dashboard/screenshot.py [--out docs/dashboard.png]

Uses a separate database (nt_dash_shot) on $NEURON_TASKS_DATABASE_URL's server (else embedded).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from neuron_tasks import embedded
from neuron_tasks.core import migrate
from neuron_tasks.dashboard.server import BackgroundDashboard
from neuron_tasks.dashboard.settings import DashboardSettings
from neuron_tasks.db import make_pool

DB = "nt_dash_shot"
SEED = [
    # finished in the last hour: a daily-looking wave per queue
    """INSERT INTO neuron_tasks.messages_history (id, message_id, queue_name, actor_name, tenant, priority,
           attempts, retries, enqueued_at, started_at, finished_at)
       SELECT g, md5(g::text), q, a, 'acme', 0, 1, 0, t - interval '80 ms', t - interval '40 ms', t
       FROM generate_series(1, 60000) g,
            LATERAL (SELECT (ARRAY['embeddings', 'llm', 'default', 'webhooks'])[1 + g % 4] AS q,
                            (ARRAY['embed_document', 'complete', 'resize_image', 'send_webhook'])[1 + g % 4] AS a,
                            now() - ((g * 7919) % 3600) * interval '1 second' AS t) x
       WHERE random() < 0.55 + 0.45 * sin(extract(epoch FROM x.t) / 600.0)""",
    """INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, state, priority, tenant, payload,
           enqueued_at, eta, attempts, lease_owner, lease_expires_at)
       SELECT md5('p' || g), (ARRAY['embeddings', 'llm', 'default', 'webhooks'])[1 + g % 4],
              (ARRAY['embed_document', 'complete', 'resize_image', 'send_webhook'])[1 + g % 4],
              CASE WHEN g % 40 = 0 THEN 'running' WHEN g % 25 = 1 THEN 'retrying' ELSE 'pending' END,
              0, 'acme', convert_to('{"args": [' || g || ']}', 'UTF8'),
              now() - (g % 90) * interval '1 second', now() - (g % 90) * interval '1 second',
              CASE WHEN g % 40 = 0 THEN 1 ELSE 0 END,
              CASE WHEN g % 40 = 0 THEN '00000000-0000-0000-0000-000000000001'::uuid END,
              CASE WHEN g % 40 = 0 THEN now() + interval '30 s' END
       FROM generate_series(1, 2400) g""",
    """INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, state, tenant, payload, attempts,
           retries, failed_at, last_error, errors)
       SELECT md5('f' || g), (ARRAY['webhooks', 'llm'])[1 + g % 2], (ARRAY['send_webhook', 'complete'])[1 + g % 2],
              'failed', 'acme', convert_to('{"args": [' || g || ']}', 'UTF8'), 4, 3,
              now() - ((g * 131) % 3600) * interval '1 second',
              (ARRAY['httpx.ConnectTimeout: timed out', 'RateLimited: provider said retry after 30 s'])[1 + g % 2],
              '[]'::jsonb
       FROM generate_series(1, 37) g""",
    """INSERT INTO neuron_tasks.workers (worker_id, worker_name, host, pid, queues, heartbeat_at, jobs_processed,
           runtime_ms, last_run)
       SELECT gen_random_uuid(), 'worker-' || g, 'node-' || (1 + g % 2), 4100 + g, '{}', now(), 8000 * g,
              8000 * g * 35.0, now()
       FROM generate_series(1, 4) g""",
    "VACUUM ANALYZE neuron_tasks.messages",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/dashboard.png")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    server = os.environ.get("NEURON_TASKS_DATABASE_URL") or embedded.start(None)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB}"')
    url = make_conninfo(server, dbname=DB)
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in SEED:
            conn.execute(stmt)
    pool = make_pool(url, max_size=4)
    dash = BackgroundDashboard(pool, DashboardSettings(dashboard_port=0))
    base = dash.start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(base)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        dash.stop()
        pool.close()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
