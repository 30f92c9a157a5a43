-- LLM and queue jobs: results backend, result cache, usage, provider state (schema/003_llm.sql).
-- Parameters are psycopg named placeholders; nothing here is built from user input.

-- name: cache_lookup
-- Cache hits among `keys` (sent as a binary bytea array): counts the hit and the access time
-- (no WAL flush wait: a lost hit count after a crash does not matter).
WITH async AS (SELECT set_config('synchronous_commit', 'off', true))
UPDATE neuron_tasks.llm_cache c
SET hits = c.hits + 1, last_access = now()
FROM async
WHERE c.key = ANY(%(keys)b::bytea[]) AND c.expires_at > now()
RETURNING c.key, c.value;

-- name: cache_store
-- Store computed results (arrays of equal length; keys and values as binary bytea arrays, which
-- costs a quarter of hex text); an existing key is replaced. A cache may lose its last writes
-- in a crash: committed without waiting for the WAL flush.
WITH async AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO neuron_tasks.llm_cache (key, operation, model, input, value, bytes, expires_at)
SELECT c.key, c.operation, c.model, c.input, c.value, octet_length(c.value) + octet_length(c.input::text),
       now() + %(ttl_s)s::float8 * interval '1 second'
FROM unnest(%(keys)b::bytea[], %(operations)b::text[], %(models)b::text[], %(inputs)b::jsonb[],
            %(values)b::bytea[]) AS c(key, operation, model, input, value), async
ON CONFLICT (key) DO UPDATE
SET value = excluded.value, input = excluded.input, bytes = excluded.bytes,
    created_at = now(), last_access = now(), expires_at = excluded.expires_at;

-- name: cache_stats
-- Per operation and model: entries, bytes, hits, oldest and newest access, expired entries.
SELECT operation, model, count(*) AS entries, coalesce(sum(bytes), 0)::bigint AS bytes,
       coalesce(sum(hits), 0)::bigint AS hits, min(last_access) AS oldest_access,
       max(last_access) AS newest_access, count(*) FILTER (WHERE expires_at <= now()) AS expired
FROM neuron_tasks.llm_cache
GROUP BY operation, model
ORDER BY operation, model;

-- name: cache_clear
-- Delete cache entries, of one operation when given; returns how many.
WITH gone AS (
    DELETE FROM neuron_tasks.llm_cache
    WHERE %(operation)s::text IS NULL OR operation = %(operation)s
    RETURNING 1)
SELECT count(*) FROM gone;

-- name: cache_expire
-- Cache rotation, step 1: delete expired entries; returns how many.
WITH gone AS (DELETE FROM neuron_tasks.llm_cache WHERE expires_at <= now() RETURNING 1)
SELECT count(*) FROM gone;

-- name: cache_evict
-- Cache rotation, step 2: least recently used entries beyond `max_entries` or `max_bytes`.
WITH ranked AS (
    SELECT key, row_number() OVER w AS n, sum(bytes) OVER w AS total
    FROM neuron_tasks.llm_cache
    WINDOW w AS (ORDER BY last_access DESC, key)),
gone AS (
    DELETE FROM neuron_tasks.llm_cache c USING ranked r
    WHERE c.key = r.key AND (r.n > %(max_entries)s OR r.total > %(max_bytes)s)
    RETURNING 1)
SELECT count(*) FROM gone;

-- name: cache_refresh_candidates
-- Entries of one operation expiring within `within_s`, most hit first (cache refresh).
SELECT key, model, input FROM neuron_tasks.llm_cache
WHERE operation = %(operation)s AND expires_at <= now() + %(within_s)s * interval '1 second'
ORDER BY hits DESC, last_access DESC
LIMIT %(limit)s;

-- name: usage_insert
-- Record token usage (arrays of equal length), one row per job, and charge it to the tenants'
-- token budgets (neuron_tasks.tenant_usage) in the same statement. `synchronous_commit` 'off' is
-- for jobs on an autocommit connection: their ack's flushed commit makes these rows durable too.
WITH sync AS (SELECT set_config('synchronous_commit', %(synchronous_commit)s, true)),
ins AS (
    INSERT INTO neuron_tasks.llm_usage
        (tenant, tokens, prompt_tokens, completion_tokens, estimated, cached, operation, provider, model, message_id,
         charged_at)
    SELECT u.*, CASE WHEN u.tenant IS NOT NULL THEN now() END
    FROM unnest(%(tenant)b::text[], %(tokens)b::integer[], %(prompt_tokens)b::integer[],
                %(completion_tokens)b::integer[], %(estimated)b::boolean[], %(cached)b::boolean[],
                %(operation)b::text[], %(provider)b::text[], %(model)b::text[], %(message_id)b::text[])
         AS u(tenant, tokens, prompt_tokens, completion_tokens, estimated, cached, operation, provider, model,
              message_id), sync
    RETURNING tenant, tokens)
INSERT INTO neuron_tasks.tenant_usage (tenant, minute, tokens, jobs)
SELECT tenant, date_trunc('minute', now()), sum(tokens), count(*) FROM ins
WHERE tenant IS NOT NULL AND tokens > 0
GROUP BY tenant
ON CONFLICT (tenant, minute) DO UPDATE
SET tokens = neuron_tasks.tenant_usage.tokens + excluded.tokens,
    jobs = neuron_tasks.tenant_usage.jobs + excluded.jobs;

-- name: usage_by_tenant
-- Tokens per tenant and operation since a time.
SELECT coalesce(tenant, '-') AS tenant, operation, count(*) AS jobs, sum(tokens)::bigint AS tokens,
       sum(coalesce(prompt_tokens, 0))::bigint AS prompt_tokens,
       sum(coalesce(completion_tokens, 0))::bigint AS completion_tokens,
       count(*) FILTER (WHERE cached) AS cached, bool_or(estimated) AS estimated
FROM neuron_tasks.llm_usage
WHERE at >= %(since)s AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: provider_acquire
-- May this worker call the provider now (rate limits, Retry-After, circuit breaker)?
SELECT decision, wait_s FROM neuron_tasks.llm_acquire_v1(%(provider)s, %(tokens)s, %(threshold)s, %(probe_s)s);

-- name: provider_observe
-- Record a provider's answer: rate-limit headers, Retry-After, success or failure.
SELECT neuron_tasks.llm_observe_v1(%(provider)s, %(req_limit)s, %(req_remaining)s, %(req_reset_s)s,
                                   %(tok_limit)s, %(tok_remaining)s, %(tok_reset_s)s, %(retry_after_s)s,
                                   %(outcome)s, %(error)s, %(threshold)s, %(open_s)s);

-- name: provider_states
-- Every provider's shared state, for `neuron-tasks llm providers`.
SELECT provider, requests_limit, requests_remaining, requests_reset_at, tokens_limit, tokens_remaining,
       tokens_reset_at, blocked_until, failures, open_until, trips, calls, throttled, last_error, updated_at
FROM neuron_tasks.llm_provider_state
ORDER BY provider;

-- name: llm_job_status
-- The LLM job view: jobs per operation and status, with average seconds.
SELECT operation, status, count, avg_seconds FROM neuron_tasks.llm_job_status ORDER BY operation, status;

-- name: llm_job_status_since
-- The LLM job view of the jobs enqueued since a time (the demo's own run).
SELECT operation, status, count(*) AS count,
       avg(extract(epoch FROM (completed_at - created_at)))::float8 AS avg_seconds
FROM neuron_tasks.llm_jobs
WHERE created_at >= %(since)s
GROUP BY operation, status
ORDER BY operation, status;

-- name: llm_failed_jobs
-- The LLM job view: the latest failed jobs with their error and retry count.
SELECT job_id, operation, model_name, tenant, error_message, retry_count, created_at
FROM neuron_tasks.llm_jobs
WHERE status = 'failed'
ORDER BY created_at DESC
LIMIT %(limit)s;

-- name: llm_trim_usage
-- Retention of token usage rows already charged to their tenant, and of rows with no tenant
-- (nothing to charge); rows still to be charged are kept.
DELETE FROM neuron_tasks.llm_usage
WHERE at < now() - make_interval(secs => %(retention_s)s) AND (charged_at IS NOT NULL OR tenant IS NULL);

-- name: sql_task_timeout
-- statement_timeout (milliseconds) for the rest of a sql_task's transaction.
SELECT set_config('statement_timeout', %(ms)s, true);

-- name: sql_task_admission
-- May this sql_task message run? Who enqueued it (recorded by the database, schema/012), whether
-- that role is a member of neuron_tasks_sql_submitter, and whether the runner role and its
-- function are still as low as schema/012 made them.
SELECT m.enqueued_by,
       m.enqueued_by IS NOT NULL AND EXISTS (
           SELECT 1 FROM pg_catalog.pg_roles r
           WHERE r.rolname = m.enqueued_by
             AND pg_catalog.pg_has_role(r.oid, 'neuron_tasks_sql_submitter', 'MEMBER')) AS submitter,
       coalesce((
           SELECT NOT r.rolsuper AND NOT r.rolbypassrls AND NOT r.rolcreaterole
                  AND NOT pg_catalog.has_schema_privilege(r.oid, 'neuron_tasks', 'USAGE')
                  AND p.prosecdef AND p.proowner = r.oid
           FROM pg_catalog.pg_roles r, pg_catalog.pg_proc p
           WHERE r.rolname = 'neuron_tasks_sql_runner'
             AND p.oid = 'neuron_tasks.sql_task_run_v1(text, integer, integer)'::pg_catalog.regprocedure), false)
           AS runner_safe
FROM neuron_tasks.messages m
WHERE m.id = %(row_id)s AND m.actor_name = 'sql_task';

-- name: sql_task_run
-- Run one statement as neuron_tasks_sql_runner (schema/012); rows capped by count and bytes.
SELECT neuron_tasks.sql_task_run_v1(%(statement)s::text, %(max_rows)s::integer, %(max_bytes)s::integer);

-- name: sql_task_terminate
-- End the session of a sql_task statement that ignored its statement_timeout's cancel.
SELECT pg_terminate_backend(%(pid)s::integer);
