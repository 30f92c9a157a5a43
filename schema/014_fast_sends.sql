-- 014: per-queue counts kept by the database, so that a queue's depth check, `neuron-tasks status`
-- and the dashboard cost the same with a million waiting messages as with ten (docs/semantics.md).

-- Live messages per queue and state, as sums of a few rows: every transaction that inserts,
-- updates or deletes messages adds its difference to one shard row (chosen by its server
-- process), in the same transaction, so the sum of a (queue, state) is exact at every commit and
-- concurrent writers seldom wait on the same row.
CREATE TABLE neuron_tasks.queue_counters (
    queue_name text     NOT NULL,
    state      text     NOT NULL,
    shard      smallint NOT NULL,
    n          bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (queue_name, state, shard)
) WITH (fillfactor = 50,
        autovacuum_vacuum_scale_factor = 0,
        autovacuum_vacuum_threshold = 1000);

COMMENT ON TABLE neuron_tasks.queue_counters IS
    'Live messages per queue and state: sum(n) over the shards of a (queue_name, state).';

-- Inserted rows: count them and wake listening workers (one NOTIFY per statement and queue, at
-- commit). Rows are added in key order, so two writers never wait on each other in a cycle.
CREATE FUNCTION neuron_tasks.messages_inserted_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    INSERT INTO neuron_tasks.queue_counters AS c (queue_name, state, shard, n)
    SELECT r.queue_name, r.state, (pg_backend_pid() % 16)::smallint, count(*)
    FROM new_rows r GROUP BY r.queue_name, r.state ORDER BY r.queue_name, r.state
    ON CONFLICT (queue_name, state, shard) DO UPDATE SET n = c.n + excluded.n;
    FOR q IN SELECT DISTINCT queue_name FROM new_rows LOOP
        PERFORM pg_notify('neuron_tasks', q);
    END LOOP;
    RETURN NULL;
END;
$$;

-- Updated rows: the difference per (queue, state); a statement that changes no state (lease
-- renewal) writes nothing.
CREATE FUNCTION neuron_tasks.messages_updated_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO neuron_tasks.queue_counters AS c (queue_name, state, shard, n)
    SELECT d.queue_name, d.state, (pg_backend_pid() % 16)::smallint, sum(d.k)
    FROM (SELECT queue_name, state, 1 AS k FROM new_rows
          UNION ALL
          SELECT queue_name, state, -1 AS k FROM old_rows) AS d
    GROUP BY d.queue_name, d.state HAVING sum(d.k) <> 0 ORDER BY d.queue_name, d.state
    ON CONFLICT (queue_name, state, shard) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END;
$$;

CREATE FUNCTION neuron_tasks.messages_deleted_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO neuron_tasks.queue_counters AS c (queue_name, state, shard, n)
    SELECT r.queue_name, r.state, (pg_backend_pid() % 16)::smallint, -count(*)
    FROM old_rows r GROUP BY r.queue_name, r.state ORDER BY r.queue_name, r.state
    ON CONFLICT (queue_name, state, shard) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END;
$$;

CREATE FUNCTION neuron_tasks.messages_truncated_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM neuron_tasks.queue_counters;
    RETURN NULL;
END;
$$;

-- Start from the rows there are, with every writer held off until this migration commits.
LOCK TABLE neuron_tasks.messages IN SHARE ROW EXCLUSIVE MODE;
DROP TRIGGER messages_notify_insert ON neuron_tasks.messages;
INSERT INTO neuron_tasks.queue_counters (queue_name, state, shard, n)
SELECT queue_name, state, 0, count(*) FROM neuron_tasks.messages GROUP BY queue_name, state;

CREATE TRIGGER messages_inserted
    AFTER INSERT ON neuron_tasks.messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION neuron_tasks.messages_inserted_v1();
CREATE TRIGGER messages_updated
    AFTER UPDATE ON neuron_tasks.messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION neuron_tasks.messages_updated_v1();
CREATE TRIGGER messages_deleted
    AFTER DELETE ON neuron_tasks.messages
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION neuron_tasks.messages_deleted_v1();
CREATE TRIGGER messages_truncated
    AFTER TRUNCATE ON neuron_tasks.messages
    FOR EACH STATEMENT EXECUTE FUNCTION neuron_tasks.messages_truncated_v1();

-- Waiting messages (pending and retrying) of a queue: a sum of at most 32 counter rows.
CREATE FUNCTION neuron_tasks.waiting_v1(p_queue text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(n), 0)::bigint FROM neuron_tasks.queue_counters
    WHERE queue_name = p_queue AND state IN ('pending', 'retrying');
$$;

-- Enqueue from SQL (as in 011), with the depth read from the counters instead of counted.
CREATE OR REPLACE FUNCTION neuron_tasks.enqueue(
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
    v_depth    integer;
    v_max_bytes integer;
    v_opts     jsonb;
    v_payload  bytea;
    v_topic    neuron_tasks.topics%ROWTYPE;
    v_fp       text;
    v_inserted bigint;
    v_existing text;
    v_key      text;
    v_value    jsonb;
    v_problem  text;
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
    FOR v_key, v_value IN SELECT e.key, e.value FROM jsonb_each(v_opts) AS e LOOP
        v_problem := neuron_tasks.option_problem_v1(v_key, v_value);
        IF v_problem IS NOT NULL THEN
            RAISE EXCEPTION 'neuron_tasks.enqueue: bad option value: option %=% %', v_key, left(v_value::text, 100),
                    v_problem
                USING HINT = 'the rules of every option are in neuron_tasks/core/options.py (RULES)',
                      ERRCODE = '22023';
        END IF;
    END LOOP;
    IF jsonb_typeof(v_opts->'priority') = 'number' THEN
        v_priority := (v_opts->>'priority')::integer;
    END IF;
    IF jsonb_typeof(v_opts->'delay') = 'number' THEN
        v_eta := now() + make_interval(secs => (v_opts->>'delay')::double precision / 1000.0);
    END IF;
    IF jsonb_typeof(v_opts->'eta') = 'number' THEN
        v_eta := to_timestamp((v_opts->>'eta')::double precision / 1000.0);
    ELSIF jsonb_typeof(v_opts->'eta') = 'string' THEN
        v_eta := (v_opts->>'eta')::timestamptz;
    END IF;
    IF jsonb_typeof(v_opts->'deadline') = 'number' THEN
        v_deadline := to_timestamp((v_opts->>'deadline')::double precision / 1000.0);
    ELSIF jsonb_typeof(v_opts->'deadline') = 'string' THEN
        v_deadline := (v_opts->>'deadline')::timestamptz;
    END IF;

    IF jsonb_typeof(v_opts->'topic') = 'string' THEN
        SELECT * INTO v_topic FROM neuron_tasks.topics WHERE name = v_opts->>'topic';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'neuron_tasks.enqueue: unknown topic %', v_opts->>'topic'
                USING HINT = 'create it first with `neuron-tasks topics set NAME`', ERRCODE = '22023';
        END IF;
        IF NOT v_opts ? 'priority' AND v_topic.priority IS NOT NULL THEN
            v_priority := v_topic.priority;
        END IF;
    END IF;
    IF jsonb_typeof(v_opts->'tenant') = 'string'
       AND neuron_tasks.setting_v1('tenant_policy', 'default') = 'refuse'
       AND NOT EXISTS (SELECT 1 FROM neuron_tasks.tenants WHERE name = v_opts->>'tenant') THEN
        RAISE EXCEPTION 'neuron_tasks.enqueue: unknown tenant % and the tenant policy is refuse', v_opts->>'tenant'
            USING HINT = 'create it with `neuron-tasks tenants set NAME`', ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(v_opts->'unique_key') = 'string' THEN
        v_fp := queue || ':' || actor || ':' || (v_opts->>'unique_key');
    END IF;

    v_depth := neuron_tasks.setting_v1('queue_depth', '10000')::integer;
    IF neuron_tasks.waiting_v1(queue) >= v_depth THEN
        RAISE EXCEPTION 'neuron_tasks.enqueue: queue % is full (% messages waiting)', queue, v_depth
            USING HINT = 'start more workers or raise queue_depth (`neuron-tasks config set queue_depth N`)',
                  ERRCODE = '53400';
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
    v_max_bytes := neuron_tasks.setting_v1('max_message_bytes', '1048576')::integer;
    IF octet_length(v_payload) > v_max_bytes THEN
        RAISE EXCEPTION 'neuron_tasks.enqueue: message is % bytes, over the limit of % bytes (max_message_bytes)',
                octet_length(v_payload), v_max_bytes
            USING HINT = 'store large payloads in a table and pass their key instead', ERRCODE = '54000';
    END IF;

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

-- As in 012: enqueue runs with the owner's rights, so a producer needs EXECUTE on it and nothing else.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = 'neuron_tasks'::regnamespace AND p.proname = 'enqueue' LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, neuron_tasks, pg_temp', f);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO neuron_tasks_producer, neuron_tasks_worker, '
                       'neuron_tasks_admin', f);
    END LOOP;
END;
$$;

-- Table rights as 012 gives every table (default privileges apply only to the role that ran 012).
GRANT SELECT, INSERT, UPDATE, DELETE ON neuron_tasks.queue_counters TO neuron_tasks_worker;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON neuron_tasks.queue_counters TO neuron_tasks_admin;
