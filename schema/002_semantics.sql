-- 002: job-queue semantics: tenants (QPS token buckets, token budgets), topics (cluster-wide
-- concurrency, retries, delay, priority), unique jobs, fair dequeue across tenants,
-- worker_status() and the seed's monitoring views.

ALTER TABLE neuron_tasks.messages
    ADD COLUMN throttled integer NOT NULL DEFAULT 0,   -- times deferred by a tenant or topic limit
    ADD COLUMN started_attempt integer;                -- attempt a worker proved it started (poison detection)

-- Fair dequeue: ready messages grouped by tenant ('' = none), then by priority and age.
DROP INDEX neuron_tasks.messages_ready_idx;
CREATE INDEX messages_ready_idx ON neuron_tasks.messages
    (queue_name, (coalesce(tenant, '')), priority, eta, id)
    WHERE state IN ('pending', 'retrying');
-- Unique jobs: one live message per fingerprint.
CREATE UNIQUE INDEX messages_fingerprint_idx ON neuron_tasks.messages (fingerprint)
    WHERE fingerprint IS NOT NULL AND state IN ('pending', 'running', 'retrying');
-- Running messages per topic (topic slots, monitoring).
CREATE INDEX messages_running_topic_idx ON neuron_tasks.messages (topic)
    WHERE state = 'running' AND topic IS NOT NULL;

ALTER TABLE neuron_tasks.workers ADD COLUMN heartbeat_s double precision NOT NULL DEFAULT 10;

-- Tenants and their limits (NULL = unlimited).
CREATE TABLE neuron_tasks.tenants (
    name              text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.:@/-]{1,200}$'),
    qps               double precision CHECK (qps > 0),
    burst             double precision CHECK (burst >= 1),
    tokens_per_minute bigint CHECK (tokens_per_minute > 0),
    tokens_per_day    bigint CHECK (tokens_per_day > 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- The shared token bucket of each rate-limited tenant, and when it may run again.
CREATE TABLE neuron_tasks.tenant_buckets (
    tenant        text PRIMARY KEY,
    tokens        double precision NOT NULL,
    refilled_at   timestamptz NOT NULL,
    blocked_until timestamptz,
    throttled     bigint NOT NULL DEFAULT 0
);

-- Token usage per tenant and minute (budgets per minute and per day are sums of these rows).
CREATE TABLE neuron_tasks.tenant_usage (
    tenant text        NOT NULL,
    minute timestamptz NOT NULL,
    tokens bigint      NOT NULL DEFAULT 0,
    jobs   bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, minute)
);

-- Topics (pg_background_queue): cluster-wide concurrency, retries, delay between starts, priority.
CREATE TABLE neuron_tasks.topics (
    name          text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.:@/-]{1,200}$'),
    concurrency   integer CHECK (concurrency > 0),
    max_retries   integer CHECK (max_retries >= 0),
    delay_s       double precision CHECK (delay_s >= 0),
    priority      integer,
    next_start_at timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per concurrency slot of a topic; `holder` is the running message's row id. A slot whose
-- holder is no longer running under a live lease is free (a killed worker frees its slots).
CREATE TABLE neuron_tasks.topic_slots (
    topic       text    NOT NULL REFERENCES neuron_tasks.topics (name) ON DELETE CASCADE,
    slot        integer NOT NULL,
    holder      bigint,
    acquired_at timestamptz,
    PRIMARY KEY (topic, slot)
);
CREATE INDEX topic_slots_holder_idx ON neuron_tasks.topic_slots (holder) WHERE holder IS NOT NULL;

-- Is a topic slot's holder a message running under a live lease? (plpgsql: evaluated per slot
-- row, also when a concurrently updated row is rechecked under FOR UPDATE SKIP LOCKED.)
CREATE FUNCTION neuron_tasks.slot_holder_alive_v1(p_holder bigint) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM neuron_tasks.messages h
                   WHERE h.id = p_holder AND h.state = 'running' AND h.lease_expires_at > now());
END;
$$;

-- Take up to p_want tokens from a tenant's bucket (refilled at p_qps, capped at p_burst).
-- granted > 0: run that many jobs now; granted = 0: wait_s until the next token.
-- The clock is read after the row lock, and never moves the refill time backwards.
CREATE FUNCTION neuron_tasks.tenant_take_v1(
    p_tenant text, p_qps double precision, p_burst double precision, p_want integer DEFAULT 1,
    OUT granted integer, OUT wait_s double precision)
LANGUAGE plpgsql AS $$
DECLARE
    v_old      double precision;
    v_refilled timestamptz;
    v_now      timestamptz;
    v_tokens   double precision;
BEGIN
    INSERT INTO neuron_tasks.tenant_buckets (tenant, tokens, refilled_at)
    VALUES (p_tenant, p_burst, clock_timestamp())
    ON CONFLICT (tenant) DO NOTHING;
    SELECT b.tokens, b.refilled_at INTO v_old, v_refilled
      FROM neuron_tasks.tenant_buckets b WHERE b.tenant = p_tenant FOR UPDATE;
    v_now := greatest(clock_timestamp(), v_refilled);
    v_tokens := least(p_burst, v_old + extract(epoch FROM v_now - v_refilled) * p_qps);
    IF v_tokens >= 1 THEN
        granted := least(greatest(p_want, 1), floor(v_tokens))::integer;
        wait_s := 0;
        UPDATE neuron_tasks.tenant_buckets
           SET tokens = v_tokens - granted, refilled_at = v_now, blocked_until = NULL
         WHERE tenant = p_tenant;
    ELSE
        granted := 0;
        wait_s := (1 - v_tokens) / p_qps;
        UPDATE neuron_tasks.tenant_buckets
           SET tokens = v_tokens, refilled_at = v_now,
               blocked_until = v_now + make_interval(secs => wait_s), throttled = throttled + 1
         WHERE tenant = p_tenant;
    END IF;
END;
$$;

-- The seed's worker_status(): one row per worker process.
CREATE FUNCTION neuron_tasks.worker_status()
RETURNS TABLE (worker_name text, status text, last_run timestamptz, jobs_processed bigint,
               avg_runtime_ms double precision, jobs_failed bigint, host text, pid integer,
               queues text[], started_at timestamptz, heartbeat_at timestamptz,
               heartbeat_age_s double precision, worker_id uuid)
LANGUAGE sql STABLE AS $$
    SELECT w.worker_name,
           CASE WHEN w.stopped_at IS NOT NULL THEN 'stopped'
                WHEN w.heartbeat_at < now() - make_interval(secs => 3 * w.heartbeat_s) THEN 'stale'
                ELSE 'running' END,
           w.last_run, w.jobs_processed,
           CASE WHEN w.jobs_processed > 0 THEN w.runtime_ms / w.jobs_processed END,
           w.jobs_failed, w.host, w.pid, w.queues, w.started_at, w.heartbeat_at,
           extract(epoch FROM now() - w.heartbeat_at)::float8, w.worker_id
    FROM neuron_tasks.workers w
    ORDER BY w.started_at DESC;
$$;

-- The seed's monitoring queries, as views.
CREATE VIEW neuron_tasks.job_counts AS
    SELECT state AS status, count(*)::bigint AS jobs FROM neuron_tasks.messages GROUP BY state
    UNION ALL
    SELECT 'finished', count(*)::bigint FROM neuron_tasks.messages_history;

CREATE VIEW neuron_tasks.tenant_stats AS
    WITH live AS (
        SELECT coalesce(tenant, '') AS tenant,
               count(*) FILTER (WHERE state = 'pending')  AS pending,
               count(*) FILTER (WHERE state = 'running')  AS running,
               count(*) FILTER (WHERE state = 'retrying') AS retrying,
               count(*) FILTER (WHERE state = 'failed')   AS failed
        FROM neuron_tasks.messages GROUP BY 1),
    done AS (
        SELECT coalesce(tenant, '') AS tenant, count(*) AS finished,
               avg(extract(epoch FROM finished_at - enqueued_at))::float8 AS avg_completion_s
        FROM neuron_tasks.messages_history GROUP BY 1)
    SELECT coalesce(live.tenant, done.tenant) AS tenant,
           coalesce(live.pending, 0) AS pending, coalesce(live.running, 0) AS running,
           coalesce(live.retrying, 0) AS retrying, coalesce(live.failed, 0) AS failed,
           coalesce(done.finished, 0) AS finished, done.avg_completion_s
    FROM live FULL JOIN done ON live.tenant = done.tenant;

CREATE VIEW neuron_tasks.failed_jobs AS
    SELECT id AS job_id, message_id, queue_name, actor_name AS job_type, tenant, topic,
           last_error AS error_message, retries AS retry_count, attempts, deaths, failed_at
    FROM neuron_tasks.messages
    WHERE state = 'failed';

-- Enqueue from SQL, inside the caller's transaction: a rollback never runs the job.
-- The payload is Dramatiq's JSON message encoding (workers must use the JSON encoder).
-- options: priority (int), delay (ms), eta (timestamptz), tenant, topic (must exist),
--          deadline (timestamptz or epoch ms), unique_key + on_duplicate, max_retries, ...
CREATE FUNCTION neuron_tasks.enqueue(
    queue   text,
    actor   text,
    args    jsonb DEFAULT '[]'::jsonb,
    kwargs  jsonb DEFAULT '{}'::jsonb,
    options jsonb DEFAULT '{}'::jsonb
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_id       text := gen_random_uuid()::text;
    v_priority integer := 0;
    v_eta      timestamptz := now();
    v_deadline timestamptz;
    v_depth    integer := coalesce(nullif(current_setting('neuron_tasks.queue_depth', true), '')::integer, 10000);
    v_waiting  integer;
    v_opts     jsonb;
    v_payload  bytea;
    v_topic    neuron_tasks.topics%ROWTYPE;
    v_fp       text;
    v_inserted bigint;
    v_existing text;
BEGIN
    IF queue IS NULL OR queue !~ '^[A-Za-z0-9_.-]{1,200}$' THEN
        RAISE EXCEPTION 'neuron_tasks.enqueue: invalid queue name %', quote_nullable(queue)
            USING HINT = 'use 1-200 letters, digits, dot, dash or underscore', ERRCODE = '22023';
    END IF;
    IF actor IS NULL OR actor !~ '^[A-Za-z_][A-Za-z0-9_.]{0,199}$' THEN
        RAISE EXCEPTION 'neuron_tasks.enqueue: invalid actor name %', quote_nullable(actor)
            USING HINT = 'pass the actor''s name as declared with @dramatiq.actor', ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(coalesce(args, '[]'::jsonb)) <> 'array' THEN
        RAISE EXCEPTION 'neuron_tasks.enqueue: args must be a JSON array, got %', jsonb_typeof(args)
            USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(coalesce(kwargs, '{}'::jsonb)) <> 'object' THEN
        RAISE EXCEPTION 'neuron_tasks.enqueue: kwargs must be a JSON object, got %', jsonb_typeof(kwargs)
            USING ERRCODE = '22023';
    END IF;
    v_opts := coalesce(options, '{}'::jsonb);
    IF jsonb_typeof(v_opts) <> 'object' THEN
        RAISE EXCEPTION 'neuron_tasks.enqueue: options must be a JSON object, got %', jsonb_typeof(options)
            USING ERRCODE = '22023';
    END IF;
    BEGIN
        IF v_opts ? 'priority' THEN v_priority := (v_opts->>'priority')::integer; END IF;
        IF v_opts ? 'delay' THEN
            v_eta := now() + make_interval(secs => (v_opts->>'delay')::bigint / 1000.0);
        END IF;
        IF v_opts ? 'eta' THEN v_eta := (v_opts->>'eta')::timestamptz; END IF;
        IF v_opts ? 'deadline' THEN
            IF jsonb_typeof(v_opts->'deadline') = 'number' THEN
                v_deadline := to_timestamp((v_opts->>'deadline')::double precision / 1000.0);
            ELSE
                v_deadline := (v_opts->>'deadline')::timestamptz;
            END IF;
        END IF;
    EXCEPTION WHEN invalid_text_representation OR datetime_field_overflow
                   OR invalid_datetime_format OR numeric_value_out_of_range THEN
        RAISE EXCEPTION 'neuron_tasks.enqueue: bad option value in %: %', v_opts, SQLERRM
            USING HINT = 'priority is an integer, delay milliseconds, eta and deadline timestamps',
                  ERRCODE = '22023';
    END;

    IF v_opts ? 'topic' THEN
        SELECT * INTO v_topic FROM neuron_tasks.topics WHERE name = v_opts->>'topic';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'neuron_tasks.enqueue: unknown topic %', v_opts->>'topic'
                USING HINT = 'create it first with `neuron-tasks topics set NAME`', ERRCODE = '22023';
        END IF;
        IF NOT v_opts ? 'priority' AND v_topic.priority IS NOT NULL THEN
            v_priority := v_topic.priority;
        END IF;
    END IF;
    IF v_opts ? 'tenant' AND coalesce(current_setting('neuron_tasks.tenant_policy', true), '') = 'refuse'
       AND NOT EXISTS (SELECT 1 FROM neuron_tasks.tenants WHERE name = v_opts->>'tenant') THEN
        RAISE EXCEPTION 'neuron_tasks.enqueue: unknown tenant % and the tenant policy is refuse', v_opts->>'tenant'
            USING HINT = 'create it with `neuron-tasks tenants set NAME`', ERRCODE = '22023';
    END IF;
    IF v_opts ? 'unique_key' THEN
        v_fp := queue || ':' || actor || ':' || (v_opts->>'unique_key');
    END IF;

    SELECT count(*) INTO v_waiting FROM (
        SELECT 1 FROM neuron_tasks.messages
        WHERE queue_name = queue AND state IN ('pending', 'retrying')
        LIMIT v_depth) AS w;
    IF v_waiting >= v_depth THEN
        RAISE EXCEPTION 'neuron_tasks.enqueue: queue % is full (% messages waiting)', queue, v_depth
            USING HINT = 'start more workers or raise neuron_tasks.queue_depth', ERRCODE = '53400';
    END IF;

    v_opts := v_opts - 'delay' - 'eta';
    IF v_deadline IS NOT NULL THEN
        v_opts := jsonb_set(v_opts, '{deadline}',
                            to_jsonb((extract(epoch FROM v_deadline) * 1000)::bigint));
    END IF;
    v_payload := convert_to(jsonb_build_object(
        'queue_name', queue,
        'actor_name', actor,
        'args', coalesce(args, '[]'::jsonb),
        'kwargs', coalesce(kwargs, '{}'::jsonb),
        'options', v_opts,
        'message_id', v_id,
        'message_timestamp', (extract(epoch FROM clock_timestamp()) * 1000)::bigint
    )::text, 'UTF8');

    INSERT INTO neuron_tasks.messages
        (message_id, queue_name, actor_name, priority, eta, tenant, topic, deadline, fingerprint, payload)
    VALUES
        (v_id, queue, actor, v_priority, v_eta, v_opts->>'tenant', v_opts->>'topic', v_deadline, v_fp, v_payload)
    ON CONFLICT (fingerprint) WHERE fingerprint IS NOT NULL AND state IN ('pending', 'running', 'retrying')
    DO NOTHING
    RETURNING id INTO v_inserted;
    IF v_inserted IS NULL THEN
        SELECT message_id INTO v_existing FROM neuron_tasks.messages
        WHERE fingerprint = v_fp AND state IN ('pending', 'running', 'retrying');
        IF coalesce(v_opts->>'on_duplicate', 'raise') = 'existing' THEN
            RETURN v_existing;
        END IF;
        RAISE EXCEPTION 'neuron_tasks.enqueue: a job with unique key % is already queued or running (message %)',
            v_opts->>'unique_key', v_existing
            USING HINT = 'pass "on_duplicate": "existing" to get that message id instead', ERRCODE = '23505';
    END IF;
    RETURN v_id;
END;
$$;

COMMENT ON FUNCTION neuron_tasks.enqueue(text, text, jsonb, jsonb, jsonb) IS
    'Enqueue a Dramatiq message from SQL in the caller''s transaction; returns the message id.';
