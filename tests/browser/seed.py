"""A database that looks lived in, for the browser tests and the docs' screenshots: queues with
live and finished messages, a dead letter, a busy worker, tenants, topics, schedules, the LLM
cache and a tuned vector index. Everything is written directly in SQL (no worker runs)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
from dramatiq.message import Message
from psycopg.types.json import Jsonb

from neuron_tasks.core.parts import parts
from neuron_tasks.testing import truncate

QUEUES = {"emails": "send_email", "media": "resize_image", "llm": "neuron_tasks.llm_embed", "reports": "build_report"}
ARGS = {"emails": lambda i: [f"user{i}@example.com", {"template": "welcome", "locale": "fr"}],
        "media": lambda i: [f"uploads/2026/photo-{i}.jpg", 800],
        "llm": lambda i: [[f"Le café numéro {i} est prêt"], "fake:embed-small"],
        "reports": lambda i: [f"acme-{i}", "monthly"]}

SQL = [
    # finished in the last hour, per queue, so the throughput chart has a shape
    """INSERT INTO neuron_tasks.messages_history (id, message_id, queue_name, actor_name, tenant, priority,
           attempts, retries, enqueued_at, started_at, finished_at)
       SELECT 1000000 + g, md5(g::text), q, a, 'acme', 0, 1, 0, t - interval '80 ms', t - interval '40 ms', t
       FROM generate_series(1, 3000) g,
            LATERAL (SELECT (ARRAY['emails', 'media', 'llm', 'reports'])[1 + g % 4] AS q,
                            (ARRAY['send_email', 'resize_image', 'neuron_tasks.llm_embed',
                                   'build_report'])[1 + g % 4] AS a,
                            now() - ((g * 7919) % 3600) * interval '1 second' AS t) x
       WHERE random() < 0.55 + 0.45 * sin(extract(epoch FROM x.t) / 600.0)""",
    """INSERT INTO neuron_tasks.tenants (name, qps, burst, tokens_per_minute, tokens_per_day) VALUES
       ('acme', 5, 10, 20000, 2000000), ('globex', 2, 4, 5000, 300000), ('initech', NULL, NULL, NULL, 100000)""",
    """INSERT INTO neuron_tasks.tenant_usage (tenant, minute, tokens, jobs)
       SELECT t, date_trunc('minute', now()) - g * interval '1 minute',
              (m * (40 + 30 * sin(g / 7.0)))::bigint * 20, (m * (40 + 30 * sin(g / 7.0)))::bigint
       FROM generate_series(0, 59) g, (VALUES ('acme', 4.0), ('globex', 1.6), ('initech', 0.5)) v(t, m)""",
    """INSERT INTO neuron_tasks.tenant_buckets (tenant, tokens, refilled_at, blocked_until, throttled) VALUES
       ('acme', 2, now(), NULL, 17), ('globex', 0, now(), now() + interval '20 s', 245)""",
    # the buckets' totals above were counted as this minute's throttles: the history below replaces them
    "DELETE FROM neuron_tasks.tenant_throttles",
    """INSERT INTO neuron_tasks.tenant_throttles (tenant, minute, n)
       SELECT t, date_trunc('minute', now()) - g * interval '1 minute', (k * greatest(sin(g / 6.0), 0))::bigint
       FROM generate_series(1, 59) g, (VALUES ('acme', 3), ('globex', 9)) v(t, k)
       WHERE k * sin(g / 6.0) >= 1""",
    """INSERT INTO neuron_tasks.llm_cache_removals (hour, entries, bytes)
       SELECT date_trunc('hour', now()) - g * interval '1 hour', 40 + (g * 37) % 90, (40 + (g * 37) % 90) * 6144
       FROM generate_series(1, 23) g""",
    """INSERT INTO neuron_tasks.topics (name, concurrency, max_retries, delay_s, priority) VALUES
       ('openai', 8, 5, NULL, NULL), ('thumbnails', 4, 2, 0.5, 10), ('exports', 1, 0, NULL, NULL)""",
    """INSERT INTO neuron_tasks.scheduler_nodes (node_id, host, pid, started_at, heartbeat_at, leader_since) VALUES
       ('00000000-0000-0000-0000-00000000aaaa', 'sched-1', 3101, now() - interval '3 hours', now(),
        now() - interval '3 hours'),
       ('00000000-0000-0000-0000-00000000bbbb', 'sched-2', 3102, now() - interval '2 hours', now(), NULL)""",
    """INSERT INTO neuron_tasks.scheduler_jobs (name, kind, target, queue_name, trigger, next_fire, node_id) VALUES
       ('nightly_report', 'actor', 'build_report', 'reports', 'cron 0 3 * * *',
        date_trunc('day', now()) + interval '1 day 3 hours', '00000000-0000-0000-0000-00000000aaaa'),
       ('refresh_feeds', 'actor', 'refresh_feeds', 'default', 'every 900s',
        date_trunc('hour', now()) + interval '1 hour', '00000000-0000-0000-0000-00000000aaaa'),
       ('neuron_tasks.lease_sweeper', 'builtin', 'neuron_tasks.core.maintenance:sweep_tick', NULL, 'every 10s',
        now() + interval '4 s', '00000000-0000-0000-0000-00000000aaaa')""",
    """INSERT INTO neuron_tasks.scheduler_fires (job, fire_time, fired_at, node_id, message_id)
       SELECT 'refresh_feeds', date_trunc('hour', now()) - g * interval '15 minutes',
              date_trunc('hour', now()) - g * interval '15 minutes' + (g % 4 + 1) * interval '70 ms',
              '00000000-0000-0000-0000-00000000aaaa', md5('feed' || g)
       FROM generate_series(0, 95) g""",
    """INSERT INTO neuron_tasks.scheduler_fires (job, fire_time, fired_at, node_id, message_id)
       SELECT 'nightly_report', date_trunc('day', now()) - g * interval '1 day' + interval '3 hours',
              date_trunc('day', now()) - g * interval '1 day' + interval '3 hours 0.2 s',
              '00000000-0000-0000-0000-00000000aaaa', md5('night' || g)
       FROM generate_series(0, 2) g""",
    """INSERT INTO neuron_tasks.scheduler_fires (job, fire_time, node_id, note)
       SELECT 'neuron_tasks.lease_sweeper', date_trunc('minute', now()) - g * interval '10 s',
              '00000000-0000-0000-0000-00000000aaaa', 'ran on the leader'
       FROM generate_series(1, 200) g""",
    """INSERT INTO neuron_tasks.llm_cache (key, operation, model, input, value, bytes, hits, created_at, last_access,
           expires_at)
       SELECT sha256(g::text::bytea), CASE WHEN g % 5 = 0 THEN 'complete' ELSE 'embed' END,
              (ARRAY['openai:text-embedding-3-small', 'local:bge-small', 'openai:gpt-4o-mini'])[1 + g % 3],
              jsonb_build_object('text', 'Le café numéro ' || g), '\\x00'::bytea, 1536 * 4, g % 17,
              now() - interval '2 days', now() - (g % 300) * interval '1 minute',
              now() + CASE WHEN g % 50 = 0 THEN interval '-1 hour' ELSE interval '5 days' END
       FROM generate_series(1, 1500) g""",
    """INSERT INTO neuron_tasks.llm_usage (tenant, tokens, cached, operation, provider, model, at)
       SELECT 'acme', 30 + g % 40, random() < 0.35 + 0.4 * (g % 24) / 24.0, 'embed', 'openai',
              'openai:text-embedding-3-small', now() - (g % 1440) * interval '1 minute'
       FROM generate_series(1, 4000) g""",
    """INSERT INTO neuron_tasks.vector_indexes (name, space, dim, ef_search, live_count, deleted_count)
       VALUES ('docs', 'cosine', 384, 64, 120000, 900)""",
    """INSERT INTO neuron_tasks.vector_tuner_decisions (index_name, at, parameter, strategy, old_value, new_value,
           recall, p95_ms, p99_ms, samples, reason)
       SELECT 'docs', now() - (24 - g) * interval '50 minutes', 'ef', 'search', 40 + g, 42 + g + (g % 3) * 4,
              0.90 + g * 0.003, 3.0 + (g % 5) * 0.4, 4.2 + (g % 5) * 0.6, 200, 'recall below target'
       FROM generate_series(0, 23) g""",
]


def _insert(conn: psycopg.Connection[Any], queue: str, i: int, **cols: Any) -> int:
    actor = QUEUES[queue]
    tenant = cols.pop("tenant", "acme")
    topic = cols.pop("topic", None)
    message = Message(queue_name=queue, actor_name=actor, args=tuple(ARGS[queue](i)), kwargs={},
                      options={"tenant": tenant, **({"topic": topic} if topic else {})})
    names = ["message_id", "queue_name", "actor_name", "tenant", "topic", "payload", *cols]
    values = [message.message_id, queue, actor, tenant, topic, message.encode(), *cols.values()]
    stmt = (f"INSERT INTO neuron_tasks.messages ({', '.join(names)}) "  # column names are ours, not input
            f"VALUES ({', '.join(['%s'] * len(values))}) RETURNING id")
    row = conn.execute(stmt, values).fetchone()
    assert row is not None
    return int(row[0])


def drop_pipelines(url: str) -> None:
    """Every pipeline dropped with what it made, and the seed's source table."""
    with psycopg.connect(url, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT name FROM neuron_tasks.pipelines").fetchall():
            conn.execute("SELECT neuron_tasks.drop_pipeline(%s, true)", [name])
        conn.execute("DROP TABLE IF EXISTS public.help_articles CASCADE")


def seed_pipeline(url: str) -> None:
    """One table pipeline with rows waiting (its status: Stale), on a small source table."""
    from neuron_tasks import pipelines

    drop_pipelines(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.help_articles (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO public.help_articles SELECT g, 'Article ' || g FROM generate_series(1, 40) g")
    pipelines.create_pipeline(url, "help_articles", source="help_articles", key="id", data="body")


def seed(url: str) -> dict[str, Any]:
    """Fill the database at `url` (its part tables emptied first); returns ids the tests look at."""
    seed_pipeline(url)
    truncate(url, *(p for p in _parts() if p != "pipelines"))
    worker = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in SQL:
            conn.execute(stmt)
        conn.execute("INSERT INTO neuron_tasks.workers (worker_id, worker_name, host, pid, queues, jobs_processed,"
                     " runtime_ms, last_run) VALUES (%s, 'node-1.worker-1', 'node-1', 4101, '{}', 5210, 182000,"
                     " now()), (%s, 'node-2.worker-1', 'node-2', 4102, '{emails,media}', 3980, 121000, now())",
                     (worker, uuid.uuid4()))
        for i in range(16):
            queue = list(QUEUES)[i % 4]
            _insert(conn, queue, i, tenant=("acme", "globex", "initech")[i % 3],
                    topic="openai" if queue == "llm" else None)
        running = [_insert(conn, "media", 100 + i, topic="thumbnails", state="running", attempts=1,
                           lease_owner=worker) for i in range(3)]
        conn.execute("UPDATE neuron_tasks.messages SET started_at = now() - id %% 7 * interval '9 s',"
                     " lease_expires_at = now() + interval '1 minute' WHERE id = ANY(%s)", (running,))
        conn.execute("INSERT INTO neuron_tasks.topic_slots (topic, slot, holder, acquired_at)"
                     " SELECT 'thumbnails', s, (%s::bigint[])[s], now() FROM generate_series(1, 3) s", (running,))
        deferred = _insert(conn, "llm", 200, tenant="globex", topic="openai")
        conn.execute("UPDATE neuron_tasks.messages SET started_at = now() - interval '3 s', attempts = 0 WHERE id = %s",
                     (deferred,))
        dead = _insert(conn, "emails", 300, tenant="globex")
        conn.execute("UPDATE neuron_tasks.messages SET state = 'failed', failed_at = now(), retries = 3, attempts = 4,"
                     " enqueued_at = now() - interval '11 minutes',"
                     " last_error = %s, errors = %s WHERE id = %s",
                     ("smtplib.SMTPServerDisconnected: Connection unexpectedly closed",
                      Jsonb([{"at": time.time() - 600 + 120 * n, "attempt": n, "type": "SMTPServerDisconnected",
                              "message": "Connection unexpectedly closed",
                              "traceback": "Traceback (most recent call last):\n  File \"mail.py\", line 12, in send\n"
                                           "smtplib.SMTPServerDisconnected: Connection unexpectedly closed\n"}
                             for n in range(1, 5)]), dead))
        conn.execute("ANALYZE neuron_tasks.messages")
    return {"dead": dead, "deferred": deferred, "running": running}


def keep_alive(url: str) -> None:
    """Fresh heartbeats for the seeded workers and scheduler nodes (as if they were running)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE neuron_tasks.workers SET heartbeat_at = now() WHERE stopped_at IS NULL")
        conn.execute("UPDATE neuron_tasks.scheduler_nodes SET heartbeat_at = now() WHERE stopped_at IS NULL")


def _parts() -> list[str]:
    return [p.name for p in parts()]
