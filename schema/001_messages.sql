-- 001: the message table (hot path), finished-message history, worker registry,
-- and enqueue from SQL.  Applied by `neuron-tasks db upgrade`.

-- Live messages: pending, running, retrying, and dead letters (failed).
-- Finished messages are deleted from here and summarised in messages_history.
CREATE TABLE neuron_tasks.messages (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id       text        NOT NULL,
    queue_name       text        NOT NULL,
    actor_name       text        NOT NULL,
    state            text        NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'running', 'retrying', 'failed')),
    priority         integer     NOT NULL DEFAULT 0,          -- lower runs first
    eta              timestamptz NOT NULL DEFAULT now(),      -- not before (delay, backoff)
    tenant           text,
    topic            text,
    deadline         timestamptz,
    fingerprint      text,
    attempts         integer     NOT NULL DEFAULT 0,          -- times claimed by a worker
    retries          integer     NOT NULL DEFAULT 0,          -- failed runs retried
    deaths           integer     NOT NULL DEFAULT 0,          -- times its worker died holding it
    lease_owner      uuid,
    lease_expires_at timestamptz,
    payload          bytea       NOT NULL,                    -- the Dramatiq-encoded message
    enqueued_at      timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    failed_at        timestamptz,
    last_error       text,
    errors           jsonb       NOT NULL DEFAULT '[]'::jsonb  -- every attempt's error and traceback
) WITH (fillfactor = 90,
        autovacuum_vacuum_scale_factor = 0.02,
        autovacuum_vacuum_threshold = 500,
        autovacuum_analyze_scale_factor = 0.05);

-- Dequeue: the next ready messages of a queue by priority then age.
CREATE INDEX messages_ready_idx ON neuron_tasks.messages (queue_name, priority, eta, id)
    WHERE state IN ('pending', 'retrying');
-- When is the next delayed message of a queue due?
CREATE INDEX messages_eta_idx ON neuron_tasks.messages (queue_name, eta)
    WHERE state IN ('pending', 'retrying');
-- Lease renewal by the owning worker, and the sweeper of dead workers' messages.
CREATE INDEX messages_lease_owner_idx ON neuron_tasks.messages (lease_owner)
    WHERE state = 'running';
CREATE INDEX messages_lease_expiry_idx ON neuron_tasks.messages (lease_expires_at)
    WHERE state = 'running';
-- Dead letters by queue and age.
CREATE INDEX messages_failed_idx ON neuron_tasks.messages (queue_name, failed_at)
    WHERE state = 'failed';
CREATE INDEX messages_message_id_idx ON neuron_tasks.messages (message_id);

-- Finished messages (no payload): throughput, latency, `status`; trimmed by retention.
CREATE TABLE neuron_tasks.messages_history (
    id           bigint      NOT NULL,
    message_id   text        NOT NULL,
    queue_name   text        NOT NULL,
    actor_name   text        NOT NULL,
    tenant       text,
    topic        text,
    priority     integer     NOT NULL,
    attempts     integer     NOT NULL,
    retries      integer     NOT NULL,
    enqueued_at  timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    worker_id    uuid
) WITH (autovacuum_vacuum_scale_factor = 0.05);
CREATE INDEX messages_history_finished_idx ON neuron_tasks.messages_history (finished_at);
CREATE INDEX messages_history_queue_idx ON neuron_tasks.messages_history (queue_name, finished_at);

-- Worker processes: registration and heartbeat (their leases live on messages).
CREATE TABLE neuron_tasks.workers (
    worker_id      uuid PRIMARY KEY,
    worker_name    text        NOT NULL,
    host           text        NOT NULL,
    pid            integer     NOT NULL,
    queues         text[]      NOT NULL DEFAULT '{}',
    started_at     timestamptz NOT NULL DEFAULT now(),
    heartbeat_at   timestamptz NOT NULL DEFAULT now(),
    stopped_at     timestamptz,
    jobs_processed bigint      NOT NULL DEFAULT 0,
    jobs_failed    bigint      NOT NULL DEFAULT 0,
    runtime_ms     double precision NOT NULL DEFAULT 0,
    last_run       timestamptz
);

-- Wake listening workers once per statement and queue (LISTEN neuron_tasks).
CREATE FUNCTION neuron_tasks.notify_enqueued_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    FOR q IN SELECT DISTINCT queue_name FROM new_rows LOOP
        PERFORM pg_notify('neuron_tasks', q);
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_notify_insert
    AFTER INSERT ON neuron_tasks.messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION neuron_tasks.notify_enqueued_v1();

-- Enqueue from SQL, inside the caller's transaction: a rollback never runs the job.
-- The payload is Dramatiq's JSON message encoding (workers must use the JSON encoder).
-- options: priority (int), delay (ms), eta (timestamptz), tenant, topic,
--          deadline (timestamptz or epoch ms), max_retries, ... (kept in the message).
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
        (message_id, queue_name, actor_name, priority, eta, tenant, topic, deadline, payload)
    VALUES
        (v_id, queue, actor, v_priority, v_eta, v_opts->>'tenant', v_opts->>'topic', v_deadline, v_payload);
    RETURN v_id;
END;
$$;

COMMENT ON FUNCTION neuron_tasks.enqueue(text, text, jsonb, jsonb, jsonb) IS
    'Enqueue a Dramatiq message from SQL in the caller''s transaction; returns the message id.';
