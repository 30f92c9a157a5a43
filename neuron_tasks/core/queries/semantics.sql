-- Tenants, token budgets, topics and their slots.  Loaded by neuron_tasks/sql.py.

-- name: tenant_upsert
-- Create or change a tenant's limits (NULL = unlimited).
INSERT INTO neuron_tasks.tenants (name, qps, burst, tokens_per_minute, tokens_per_day)
VALUES (%(name)s, %(qps)s, %(burst)s, %(tokens_per_minute)s, %(tokens_per_day)s)
ON CONFLICT (name) DO UPDATE
SET qps = excluded.qps, burst = excluded.burst, tokens_per_minute = excluded.tokens_per_minute,
    tokens_per_day = excluded.tokens_per_day, updated_at = now()
RETURNING name;

-- name: tenant_delete
-- Remove a tenant (its messages then run under the default tenant policy).
DELETE FROM neuron_tasks.tenants WHERE name = %(name)s;

-- name: tenant_limits
-- Every tenant's limits (the workers' policy cache).
SELECT name, qps, burst, tokens_per_minute, tokens_per_day FROM neuron_tasks.tenants;

-- name: tenant_overview
-- Tenants with limits, current usage and throttle counts.
SELECT t.name, t.qps, t.burst, t.tokens_per_minute, t.tokens_per_day,
       coalesce(u.minute_tokens, 0)::bigint AS tokens_this_minute,
       coalesce(u.day_tokens, 0)::bigint AS tokens_today,
       coalesce(b.throttled, 0) AS throttled,
       b.blocked_until,
       coalesce(s.pending, 0) AS pending, coalesce(s.running, 0) AS running,
       coalesce(s.failed, 0) AS failed, coalesce(s.finished, 0) AS finished
FROM neuron_tasks.tenants t
LEFT JOIN neuron_tasks.tenant_buckets b ON b.tenant = t.name
LEFT JOIN neuron_tasks.tenant_stats s ON s.tenant = t.name
LEFT JOIN LATERAL (
    SELECT sum(tokens) FILTER (WHERE minute = date_trunc('minute', now())) AS minute_tokens,
           sum(tokens) AS day_tokens
    FROM neuron_tasks.tenant_usage
    WHERE tenant = t.name AND minute >= date_trunc('day', now())) u ON true
WHERE %(name)s::text IS NULL OR t.name = %(name)s
ORDER BY t.name;

-- name: tenant_take
-- Take up to `want` tokens from a tenant's shared bucket: (granted, seconds to wait when none).
SELECT granted, wait_s FROM neuron_tasks.tenant_take_v1(%(tenant)s, %(qps)s, %(burst)s, %(want)s);

-- name: tenant_block
-- A tenant may not run before `until` (its token budget is spent); dequeue skips it meanwhile.
INSERT INTO neuron_tasks.tenant_buckets (tenant, tokens, refilled_at, blocked_until, throttled)
VALUES (%(tenant)s, 0, now(), %(until)s, 1)
ON CONFLICT (tenant) DO UPDATE
SET blocked_until = greatest(coalesce(neuron_tasks.tenant_buckets.blocked_until, excluded.blocked_until),
                             excluded.blocked_until),
    throttled = neuron_tasks.tenant_buckets.throttled + 1;

-- name: tenant_usage_now
-- Tokens a tenant used this minute and today, and when the next minute and day start.
SELECT coalesce(sum(tokens) FILTER (WHERE minute = date_trunc('minute', now())), 0)::bigint AS minute_used,
       coalesce(sum(tokens), 0)::bigint AS day_used,
       date_trunc('minute', now()) + interval '1 minute' AS next_minute,
       date_trunc('day', now()) + interval '1 day' AS next_day
FROM neuron_tasks.tenant_usage
WHERE tenant = %(tenant)s AND minute >= date_trunc('day', now());

-- name: tenant_charge
-- Charge tokens used by a job to its tenant's current minute.
INSERT INTO neuron_tasks.tenant_usage (tenant, minute, tokens, jobs)
VALUES (%(tenant)s, date_trunc('minute', now()), %(tokens)s, 1)
ON CONFLICT (tenant, minute) DO UPDATE
SET tokens = neuron_tasks.tenant_usage.tokens + excluded.tokens,
    jobs = neuron_tasks.tenant_usage.jobs + 1;

-- name: trim_tenant_usage
-- Usage older than two days is no longer needed by any budget.
DELETE FROM neuron_tasks.tenant_usage WHERE minute < now() - interval '2 days';

-- name: topic_upsert
-- Create or change a topic's settings (NULL = no limit / inherit).
INSERT INTO neuron_tasks.topics (name, concurrency, max_retries, delay_s, priority)
VALUES (%(name)s, %(concurrency)s, %(max_retries)s, %(delay_s)s, %(priority)s)
ON CONFLICT (name) DO UPDATE
SET concurrency = excluded.concurrency, max_retries = excluded.max_retries,
    delay_s = excluded.delay_s, priority = excluded.priority, updated_at = now()
RETURNING name;

-- name: topic_slots_trim
-- Drop the slots beyond a topic's concurrency.
DELETE FROM neuron_tasks.topic_slots
WHERE topic = %(name)s AND (%(concurrency)s::int IS NULL OR slot > %(concurrency)s);

-- name: topic_slots_fill
-- Create the slots 1..concurrency of a topic.
INSERT INTO neuron_tasks.topic_slots (topic, slot)
SELECT %(name)s, g FROM generate_series(1, coalesce(%(concurrency)s::int, 0)) AS g
ON CONFLICT DO NOTHING;

-- name: topic_delete
-- Remove a topic and its slots.
DELETE FROM neuron_tasks.topics WHERE name = %(name)s;

-- name: topic_settings
-- Every topic's settings (policy cache).
SELECT name, concurrency, max_retries, delay_s, priority FROM neuron_tasks.topics;

-- name: topic_overview
-- Topics with their running count and slots in use.
SELECT t.name, t.concurrency, t.max_retries, t.delay_s, t.priority, t.next_start_at,
       (SELECT count(*) FROM neuron_tasks.messages m WHERE m.topic = t.name AND m.state = 'running') AS running,
       (SELECT count(*) FROM neuron_tasks.messages m
         WHERE m.topic = t.name AND m.state IN ('pending', 'retrying')) AS waiting
FROM neuron_tasks.topics t
ORDER BY t.name;

-- name: topic_start
-- Delay between tasks: claim the topic's next start; no row = not yet (see next_start_at).
UPDATE neuron_tasks.topics
SET next_start_at = now() + %(delay_s)s * interval '1 second'
WHERE name = %(topic)s AND (next_start_at IS NULL OR next_start_at <= now())
RETURNING name;

-- name: topic_next_start
-- When a delayed topic may start its next task.
SELECT extract(epoch FROM (next_start_at - now()))::float8 AS wait_s FROM neuron_tasks.topics
WHERE name = %(topic)s;

-- name: poison_mark_started
-- A message that killed a worker before is about to run again: record that it started, so a
-- second death counts against it, and its own max_retries (message > topic > actor; NULL: the
-- setting), the limit reclaim_expired holds its deaths to.
UPDATE neuron_tasks.messages SET started_attempt = attempts, max_retries = %(max_retries)s
WHERE id = %(id)s AND lease_owner = %(owner)s;
