-- The LLM cache page of the dashboard (llm/page.py). Each read is bounded.

-- name: llm_page_cache_models
-- Cache entries per operation and model: count, bytes, hits, expired (rotation deletes those next).
-- The cache holds at most llm_cache_max_entries rows (rotation), so this read is bounded.
SELECT operation, model, count(*)::bigint AS entries, coalesce(sum(bytes), 0)::bigint AS bytes,
       coalesce(sum(hits), 0)::bigint AS hits, count(*) FILTER (WHERE expires_at <= now())::bigint AS expired,
       max(last_access) AS last_access
FROM neuron_tasks.llm_cache
GROUP BY operation, model
ORDER BY entries DESC, operation, model
LIMIT 100;

-- name: llm_page_calls
-- Calls of the latest %(sample)s recorded (the usage table's key, newest first) within the last
-- day, per hour and model: answered from the cache or by the provider.
SELECT date_trunc('hour', u.at) AS hour, coalesce(u.model, '-') AS model, coalesce(u.operation, '-') AS operation,
       count(*)::bigint AS calls, count(*) FILTER (WHERE u.cached)::bigint AS cached,
       coalesce(sum(u.tokens) FILTER (WHERE NOT u.cached), 0)::bigint AS tokens
FROM (SELECT at, model, operation, cached, tokens FROM neuron_tasks.llm_usage ORDER BY id DESC LIMIT %(sample)s) u
WHERE u.at > date_trunc('hour', now()) - interval '23 hours'
GROUP BY 1, 2, 3;

-- name: llm_page_now_hour
SELECT date_trunc('hour', now()) AS hour;

-- name: llm_page_removals
-- Cache entries removed per hour over the last day (schema 019's trigger counts them).
SELECT hour, entries, bytes FROM neuron_tasks.llm_cache_removals
WHERE hour > date_trunc('hour', now()) - interval '23 hours' ORDER BY hour;
