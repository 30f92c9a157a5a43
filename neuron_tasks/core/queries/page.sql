-- The tenants and topics pages of the dashboard (core/page.py). Each read is bounded.

-- name: page_tenants
-- Tenants with their limits, jobs and tokens of the current minute and today, and throttling.
SELECT t.name, t.qps, t.burst, t.tokens_per_minute, t.tokens_per_day,
       coalesce(u.minute_jobs, 0)::bigint AS jobs_this_minute,
       coalesce(u.last_minute_jobs, 0)::bigint AS jobs_last_minute,
       coalesce(u.minute_tokens, 0)::bigint AS tokens_this_minute,
       coalesce(u.day_tokens, 0)::bigint AS tokens_today,
       coalesce(b.throttled, 0)::bigint AS throttled,
       b.blocked_until, (b.blocked_until > now()) AS blocked
FROM neuron_tasks.tenants t
LEFT JOIN neuron_tasks.tenant_buckets b ON b.tenant = t.name
LEFT JOIN LATERAL (
    SELECT sum(jobs) FILTER (WHERE minute = date_trunc('minute', now())) AS minute_jobs,
           sum(jobs) FILTER (WHERE minute = date_trunc('minute', now()) - interval '1 minute') AS last_minute_jobs,
           sum(tokens) FILTER (WHERE minute = date_trunc('minute', now())) AS minute_tokens,
           sum(tokens) AS day_tokens
    FROM neuron_tasks.tenant_usage
    WHERE tenant = t.name AND minute >= date_trunc('day', now())) u ON true
ORDER BY t.name
LIMIT %(limit)s;

-- name: page_tenant_usage
-- Jobs and tokens per tenant and minute over the last hour (the tenant_usage key's range scan).
SELECT tenant, minute, jobs, tokens
FROM neuron_tasks.tenant_usage
WHERE minute >= date_trunc('minute', now()) - interval '59 minutes' AND tenant = ANY(%(tenants)s)
ORDER BY minute;

-- name: page_now_minute
SELECT date_trunc('minute', now()) AS minute;

-- name: page_topics
-- Topics with their limits, the slots held by a running message under a live lease, and the
-- messages waiting (pending or retrying), counted up to %(cap)s each.
SELECT t.name, t.concurrency, t.max_retries, t.delay_s, t.priority, t.next_start_at,
       (SELECT count(*) FROM neuron_tasks.topic_slots s
        WHERE s.topic = t.name AND s.holder IS NOT NULL
          AND neuron_tasks.slot_holder_alive_v1(s.holder))::int AS in_use,
       (SELECT count(*) FROM (SELECT 1 FROM neuron_tasks.messages m
                              WHERE m.topic = t.name AND m.state IN ('pending', 'retrying')
                              LIMIT %(cap)s) w)::int AS waiting,
       (SELECT count(*) FROM (SELECT 1 FROM neuron_tasks.messages m
                              WHERE m.topic = t.name AND m.state = 'running' LIMIT %(cap)s) r)::int AS running
FROM neuron_tasks.topics t
ORDER BY t.name
LIMIT %(limit)s;

-- name: page_tenant_throttles
-- Throttles per tenant and minute over the last hour (schema 019's trigger counts them).
SELECT tenant, minute, n
FROM neuron_tasks.tenant_throttles
WHERE minute >= date_trunc('minute', now()) - interval '59 minutes' AND tenant = ANY(%(tenants)s)
ORDER BY minute;
