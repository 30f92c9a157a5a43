-- 003: LLM and queue jobs: results backend, result cache, token usage, provider state
-- (rate limits and circuit breaker shared by every worker), and the LLM job views.

-- Dramatiq results (neuron_tasks.results.PostgresResultBackend); expired rows are ignored
-- by reads and deleted by the cache rotation job and, now and then, by writers.
CREATE TABLE neuron_tasks.results (
    key        text PRIMARY KEY,                 -- Dramatiq's message key (namespace, queue, actor, id)
    value      bytea       NOT NULL,             -- the encoded result or exception
    stored_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
) WITH (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.05);
CREATE INDEX results_expires_idx ON neuron_tasks.results (expires_at);

-- Result cache of embed / complete / rerank, keyed by operation + model + normalised input.
-- No index on last_access: hits then stay HOT updates; rotation sorts the table instead.
CREATE TABLE neuron_tasks.llm_cache (
    key         bytea PRIMARY KEY,               -- sha256 of (operation, model, normalised input)
    operation   text        NOT NULL,
    model       text        NOT NULL,            -- provider:model
    input       jsonb       NOT NULL,            -- the normalised input (cache refresh recomputes from it)
    value       bytea       NOT NULL,            -- float32 vector (embed) or JSON (complete, rerank)
    bytes       integer     NOT NULL,
    hits        bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_access timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.05);
CREATE INDEX llm_cache_expires_idx ON neuron_tasks.llm_cache (expires_at);

-- Token usage per job and tenant, to be charged to the tenant's budget (charged_at set then).
CREATE TABLE neuron_tasks.llm_usage (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant            text,
    tokens            integer     NOT NULL,
    prompt_tokens     integer,
    completion_tokens integer,
    estimated         boolean     NOT NULL DEFAULT false,   -- character-based estimate (local models)
    cached            boolean     NOT NULL DEFAULT false,   -- answered from the cache: no provider tokens
    operation         text,
    provider          text,
    model             text,
    message_id        text,
    at                timestamptz NOT NULL DEFAULT now(),
    charged_at        timestamptz
);
CREATE INDEX llm_usage_tenant_at_idx ON neuron_tasks.llm_usage (tenant, at);
CREATE INDEX llm_usage_message_idx ON neuron_tasks.llm_usage (message_id);
CREATE INDEX llm_usage_uncharged_idx ON neuron_tasks.llm_usage (at) WHERE charged_at IS NULL;

-- One row per provider (its base URL): the rate-limit headers it last sent, a Retry-After
-- block, and the circuit breaker.  Every worker reads and updates it, so N workers together
-- stay under the provider's limit.
CREATE TABLE neuron_tasks.llm_provider_state (
    provider           text PRIMARY KEY,
    requests_limit     integer,
    requests_remaining integer,
    requests_reset_at  timestamptz,
    tokens_limit       integer,
    tokens_remaining   integer,
    tokens_reset_at    timestamptz,
    blocked_until      timestamptz,                 -- Retry-After of the last 429
    failures           integer     NOT NULL DEFAULT 0,  -- consecutive 5xx / timeouts
    open_until         timestamptz,                 -- circuit open (no calls) until then
    trips              integer     NOT NULL DEFAULT 0,
    calls              bigint      NOT NULL DEFAULT 0,
    throttled          bigint      NOT NULL DEFAULT 0,  -- 429 answers received
    last_error         text,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- May a worker call this provider now?  Returns (decision, wait seconds):
--   'go'    reserved one request (and `tokens`) from the current rate-limit window;
--   'probe' the circuit was open and this caller is the one half-open probe;
--   'wait'  rate limited or blocked by Retry-After: try again after `wait`;
--   'open'  the circuit is open: try again after `wait`.
CREATE FUNCTION neuron_tasks.llm_acquire_v1(p_provider text, p_tokens integer, p_threshold integer,
                                            p_probe_s double precision)
RETURNS TABLE (decision text, wait_s double precision)
LANGUAGE plpgsql AS $$
DECLARE
    s neuron_tasks.llm_provider_state;
    t timestamptz := clock_timestamp();
BEGIN
    INSERT INTO neuron_tasks.llm_provider_state (provider) VALUES (p_provider) ON CONFLICT DO NOTHING;
    SELECT * INTO s FROM neuron_tasks.llm_provider_state WHERE provider = p_provider FOR UPDATE;
    IF s.failures >= p_threshold AND s.open_until IS NOT NULL THEN
        IF s.open_until > t THEN
            RETURN QUERY SELECT 'open'::text, extract(epoch FROM s.open_until - t)::float8;
            RETURN;
        END IF;
        UPDATE neuron_tasks.llm_provider_state
        SET open_until = t + make_interval(secs => p_probe_s), calls = calls + 1, updated_at = t
        WHERE provider = p_provider;
        RETURN QUERY SELECT 'probe'::text, 0::float8;
        RETURN;
    END IF;
    IF s.blocked_until > t THEN
        RETURN QUERY SELECT 'wait'::text, extract(epoch FROM s.blocked_until - t)::float8;
        RETURN;
    END IF;
    IF s.requests_reset_at > t AND s.requests_remaining <= 0 THEN
        RETURN QUERY SELECT 'wait'::text, extract(epoch FROM s.requests_reset_at - t)::float8;
        RETURN;
    END IF;
    IF s.tokens_reset_at > t AND s.tokens_remaining < p_tokens THEN
        RETURN QUERY SELECT 'wait'::text, extract(epoch FROM s.tokens_reset_at - t)::float8;
        RETURN;
    END IF;
    UPDATE neuron_tasks.llm_provider_state
    SET requests_remaining = CASE WHEN requests_reset_at > t THEN requests_remaining - 1
                                  ELSE requests_remaining END,
        tokens_remaining = CASE WHEN tokens_reset_at > t THEN tokens_remaining - p_tokens
                                ELSE tokens_remaining END,
        calls = calls + 1,
        updated_at = t
    WHERE provider = p_provider;
    RETURN QUERY SELECT 'go'::text, 0::float8;
END;
$$;

-- What the provider said: rate-limit headers (NULL when absent), Retry-After, success/failure.
-- Remaining counts of one window only go down (answers arrive out of order); an answer from an
-- older window is ignored; a later reset time starts a new window.
CREATE FUNCTION neuron_tasks.llm_observe_v1(p_provider text, p_req_limit integer, p_req_remaining integer,
                                            p_req_reset_s double precision, p_tok_limit integer,
                                            p_tok_remaining integer, p_tok_reset_s double precision,
                                            p_retry_after_s double precision, p_outcome text,
                                            p_error text, p_threshold integer, p_open_s double precision)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz := clock_timestamp();
    req_reset timestamptz := t + make_interval(secs => p_req_reset_s);
    tok_reset timestamptz := t + make_interval(secs => p_tok_reset_s);
    slack interval := interval '500 milliseconds';
BEGIN
    INSERT INTO neuron_tasks.llm_provider_state (provider) VALUES (p_provider) ON CONFLICT DO NOTHING;
    UPDATE neuron_tasks.llm_provider_state s SET
        requests_limit = coalesce(p_req_limit, s.requests_limit),
        requests_remaining = CASE
            WHEN p_req_remaining IS NULL OR req_reset IS NULL THEN s.requests_remaining
            WHEN s.requests_reset_at IS NULL OR s.requests_reset_at <= t
                 OR req_reset > s.requests_reset_at + slack THEN p_req_remaining
            WHEN req_reset < s.requests_reset_at - slack THEN s.requests_remaining
            ELSE least(s.requests_remaining, p_req_remaining) END,
        requests_reset_at = CASE
            WHEN p_req_remaining IS NULL OR req_reset IS NULL THEN s.requests_reset_at
            WHEN s.requests_reset_at IS NULL OR s.requests_reset_at <= t
                 OR req_reset > s.requests_reset_at + slack THEN req_reset
            ELSE s.requests_reset_at END,
        tokens_limit = coalesce(p_tok_limit, s.tokens_limit),
        tokens_remaining = CASE
            WHEN p_tok_remaining IS NULL OR tok_reset IS NULL THEN s.tokens_remaining
            WHEN s.tokens_reset_at IS NULL OR s.tokens_reset_at <= t
                 OR tok_reset > s.tokens_reset_at + slack THEN p_tok_remaining
            WHEN tok_reset < s.tokens_reset_at - slack THEN s.tokens_remaining
            ELSE least(s.tokens_remaining, p_tok_remaining) END,
        tokens_reset_at = CASE
            WHEN p_tok_remaining IS NULL OR tok_reset IS NULL THEN s.tokens_reset_at
            WHEN s.tokens_reset_at IS NULL OR s.tokens_reset_at <= t
                 OR tok_reset > s.tokens_reset_at + slack THEN tok_reset
            ELSE s.tokens_reset_at END,
        blocked_until = CASE WHEN p_retry_after_s IS NOT NULL
                             THEN greatest(s.blocked_until, t + make_interval(secs => p_retry_after_s))
                             ELSE s.blocked_until END,
        throttled = s.throttled + (p_outcome = 'throttled')::int,
        failures = CASE WHEN p_outcome = 'ok' THEN 0
                        WHEN p_outcome = 'failure' THEN s.failures + 1
                        ELSE s.failures END,
        open_until = CASE WHEN p_outcome = 'ok' THEN NULL
                          WHEN p_outcome = 'failure' AND s.failures + 1 >= p_threshold
                          THEN t + make_interval(secs => p_open_s)
                          ELSE s.open_until END,
        trips = s.trips + (p_outcome = 'failure' AND s.failures + 1 = p_threshold)::int,
        last_error = CASE WHEN p_outcome = 'ok' THEN s.last_error ELSE coalesce(p_error, s.last_error) END,
        updated_at = t
    WHERE s.provider = p_provider;
END;
$$;

-- The seed's neurondb_llm_jobs, over our queue tables: one row per LLM or queue job.
-- Status words follow the seed: pending, running, retrying, failed, completed.
CREATE VIEW neuron_tasks.llm_jobs AS
WITH jobs AS (
    SELECT m.message_id, m.actor_name, m.tenant, m.state AS status, m.enqueued_at, m.started_at,
           NULL::timestamptz AS completed_at, m.last_error, m.retries
    FROM neuron_tasks.messages m
    WHERE m.actor_name IN ('llm_embed', 'llm_complete', 'llm_rerank', 'http_call', 'sql_task',
                           'cache_refresh', 'llm_cache_rotate')
    UNION ALL
    SELECT h.message_id, h.actor_name, h.tenant, 'completed', h.enqueued_at, h.started_at,
           h.finished_at, NULL, h.retries
    FROM neuron_tasks.messages_history h
    WHERE h.actor_name IN ('llm_embed', 'llm_complete', 'llm_rerank', 'http_call', 'sql_task',
                           'cache_refresh', 'llm_cache_rotate')
)
SELECT j.message_id AS job_id,
       CASE j.actor_name WHEN 'llm_embed' THEN 'embedding' WHEN 'llm_complete' THEN 'completion'
                         WHEN 'llm_rerank' THEN 'reranking' WHEN 'llm_cache_rotate' THEN 'cache_rotation'
                         ELSE j.actor_name END AS operation,
       u.model AS model_name, j.tenant, j.status, j.enqueued_at AS created_at, j.started_at,
       j.completed_at, j.last_error AS error_message, j.retries AS retry_count,
       u.tokens, u.cached
FROM jobs j
LEFT JOIN LATERAL (
    SELECT max(x.model) AS model, sum(x.tokens)::bigint AS tokens, bool_and(x.cached) AS cached
    FROM neuron_tasks.llm_usage x WHERE x.message_id = j.message_id) u ON true;

-- The seed's llm_job_status: counts and average seconds per operation and status.
CREATE VIEW neuron_tasks.llm_job_status AS
SELECT operation, status, count(*) AS count,
       avg(extract(epoch FROM (completed_at - created_at)))::float8 AS avg_seconds
FROM neuron_tasks.llm_jobs
GROUP BY operation, status;
