-- 011: input checks. Every message option is checked where it enters, by the same rules as Python
-- enqueue (neuron_tasks/core/options.py RULES; tests/integration/test_input_validation.py holds the
-- two to the same answers); SQL enqueue reads queue_depth, tenant_policy and max_message_bytes from
-- the runtime settings (`neuron-tasks config set`); a message's times stay where every reader can
-- use them; a message's own max_retries governs its worker deaths (poison).
-- Safe to apply again: every statement replaces what it creates.

-- The max_retries a worker recorded before running a message again after a crash (message option
-- > topic > actor; NULL: the max_retries setting); reclaim_expired holds its deaths to it.
ALTER TABLE neuron_tasks.messages ADD COLUMN IF NOT EXISTS max_retries integer;

-- A message's eta and deadline must be times Python can read (years 1-9999): an 'infinity' eta
-- stopped every claim of its queue and the dashboard's pages. Rows already out of range are
-- dead-lettered with the reason (they could never run), then the range is enforced.
UPDATE neuron_tasks.messages
SET state = 'failed',
    failed_at = coalesce(failed_at, now()),
    lease_owner = NULL,
    lease_expires_at = NULL,
    last_error = format('neuron_tasks.errors.InvalidOption: eta %s or deadline %s is out of range '
                        '(years 1970 to 36600 days ahead); dead-lettered by migration 011', eta, deadline),
    errors = errors || jsonb_build_array(jsonb_build_object(
        'at', extract(epoch FROM now()), 'attempt', attempts, 'type', 'neuron_tasks.errors.InvalidOption',
        'message', format('eta %s or deadline %s is out of range; dead-lettered by migration 011', eta, deadline),
        'traceback', '')),
    eta = CASE WHEN eta > '0001-01-02 00:00:00+00' AND eta < '9999-12-30 00:00:00+00' THEN eta ELSE now() END,
    deadline = CASE WHEN deadline > '0001-01-02 00:00:00+00' AND deadline < '9999-12-30 00:00:00+00'
                    THEN deadline END,
    updated_at = now()
WHERE NOT (eta > '0001-01-02 00:00:00+00' AND eta < '9999-12-30 00:00:00+00')
   OR (deadline IS NOT NULL AND NOT (deadline > '0001-01-02 00:00:00+00' AND deadline < '9999-12-30 00:00:00+00'));

ALTER TABLE neuron_tasks.messages
    DROP CONSTRAINT IF EXISTS messages_eta_range,
    DROP CONSTRAINT IF EXISTS messages_deadline_range,
    ADD CONSTRAINT messages_eta_range
        CHECK (eta > '0001-01-02 00:00:00+00' AND eta < '9999-12-30 00:00:00+00'),
    ADD CONSTRAINT messages_deadline_range
        CHECK (deadline > '0001-01-02 00:00:00+00' AND deadline < '9999-12-30 00:00:00+00');

-- (end of the time range checks)

-- A setting as the cluster's processes see it: the runtime value (`neuron-tasks config set`),
-- else this session's `SET neuron_tasks.<key>`, else the built-in default published by
-- `neuron-tasks db upgrade`, else p_default.
CREATE OR REPLACE FUNCTION neuron_tasks.setting_v1(p_key text, p_default text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v text;
BEGIN
    SELECT s.value INTO v FROM neuron_tasks.settings s WHERE s.key = p_key;
    IF v IS NOT NULL THEN
        RETURN v;
    END IF;
    v := nullif(current_setting('neuron_tasks.' || p_key, true), '');
    IF v IS NOT NULL THEN
        RETURN v;
    END IF;
    SELECT d.default_value INTO v FROM neuron_tasks.setting_defs d WHERE d.key = p_key;
    RETURN coalesce(v, p_default);
END;
$$;

-- What is wrong with one message option (the end of "option KEY=VALUE ..."), or NULL: the rules
-- of neuron_tasks/core/options.py RULES, with the same words. Options it does not know are
-- carried as given (JSON has no NaN or Infinity, so any JSON value is safe to carry).
CREATE OR REPLACE FUNCTION neuron_tasks.option_problem_v1(p_key text, p_value jsonb, p_depth integer DEFAULT 0)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t        text := jsonb_typeof(p_value);
    kind     text;
    lo       numeric;
    hi       numeric;
    nullable boolean := true;
    hint     text;
    n        numeric;
    ts       timestamptz;
    k        text;
    v        jsonb;
    inner_problem text;
    horizon_ms constant numeric := 36600 * 86400000::numeric;
BEGIN
    CASE p_key
    WHEN 'priority' THEN
        kind := 'int'; lo := -2147483648; hi := 2147483647; nullable := false;
        hint := 'must be a 32-bit integer (lower runs first)';
    WHEN 'max_retries' THEN
        kind := 'int'; lo := 0; hi := 2147483647; hint := 'must be an integer from 0 to 2147483647';
    WHEN 'retries' THEN
        kind := 'int'; lo := 0; hi := 2147483647; nullable := false;
        hint := 'must be an integer from 0 to 2147483647 (the count of past retries)';
    WHEN 'min_backoff', 'max_backoff' THEN
        kind := 'int'; lo := 0; hi := 2147483647; nullable := false;
        hint := 'must be milliseconds, an integer from 0 to 2147483647';
    WHEN 'time_limit' THEN
        kind := 'number'; lo := 1; hi := 2147483647; hint := 'must be milliseconds, a number from 1 to 2147483647';
    WHEN 'max_age' THEN
        kind := 'number'; lo := 1; hi := horizon_ms; hint := 'must be milliseconds, a number from 1 to 3162240000000';
    WHEN 'result_ttl' THEN
        kind := 'int'; lo := 1; hi := horizon_ms; nullable := false;
        hint := 'must be milliseconds, an integer from 1 to 3162240000000';
    WHEN 'requeue_timestamp' THEN
        kind := 'int'; lo := 0; hi := 9007199254740992; hint := 'must be epoch milliseconds (an integer >= 0)';
    WHEN 'traceback' THEN
        kind := 'text'; lo := 0; hint := 'must be a string';
    WHEN 'tenant', 'topic' THEN
        kind := 'name'; hint := 'is not a valid name: use 1-200 letters, digits or . _ - : @ /';
    WHEN 'on_retry_exhausted', 'on_success', 'on_failure' THEN
        kind := 'text'; lo := 1; hi := 200; hint := 'must be an actor name (a string of 1-200 characters)';
    WHEN 'unique', 'pipe_ignore', 'notify_shutdown', 'store_results' THEN
        kind := 'bool'; hint := 'must be true or false';
    WHEN 'unique_key' THEN
        kind := 'text'; lo := 1; hi := 500; hint := 'must be a string of 1-500 characters';
    WHEN 'on_duplicate' THEN
        kind := 'choice'; nullable := false; hint := 'must be ''raise'' or ''existing''';
    WHEN 'deadline' THEN
        kind := 'time';
        hint := 'must be epoch milliseconds, an ISO-8601 timestamp or a datetime, from 1970 to 36600 days ahead';
    WHEN 'eta' THEN
        kind := 'time'; nullable := false;
        hint := 'must be epoch milliseconds or a timestamp, from 1970 to 36600 days ahead';
    WHEN 'delay' THEN
        kind := 'number'; lo := 0; hi := horizon_ms; nullable := false;
        hint := 'must be milliseconds, a number from 0 to 3162240000000';
    WHEN 'throws' THEN
        kind := 'exceptions';
        hint := 'must be an exception class or a tuple of them; from SQL, set throws on the actor instead';
    WHEN 'pipe_target' THEN
        kind := 'message';
        hint := 'must be a message as Dramatiq''s pipelines write it (queue_name, actor_name, args, kwargs, options)';
    ELSE
        RETURN NULL;
    END CASE;

    IF t = 'null' THEN
        RETURN CASE WHEN nullable THEN NULL ELSE hint END;
    END IF;
    IF kind IN ('int', 'number') THEN
        IF t <> 'number' THEN
            RETURN hint;
        END IF;
        n := (p_value #>> '{}')::numeric;
        IF (kind = 'int' AND scale(n) > 0) OR n < lo OR n > hi THEN
            RETURN hint;
        END IF;
    ELSIF kind = 'bool' THEN
        IF t <> 'boolean' THEN
            RETURN hint;
        END IF;
    ELSIF kind = 'name' THEN
        IF t <> 'string' OR (p_value #>> '{}') !~ '^[A-Za-z0-9_.:@/-]{1,200}$' THEN
            RETURN hint;
        END IF;
    ELSIF kind = 'text' THEN
        IF t <> 'string' OR length(p_value #>> '{}') < lo OR length(p_value #>> '{}') > coalesce(hi, length(p_value #>> '{}')) THEN
            RETURN hint;
        END IF;
    ELSIF kind = 'choice' THEN
        IF t <> 'string' OR (p_value #>> '{}') NOT IN ('raise', 'existing') THEN
            RETURN hint;
        END IF;
    ELSIF kind = 'time' THEN
        IF t = 'number' THEN
            n := (p_value #>> '{}')::numeric;
            IF n < 0 OR n > extract(epoch FROM now()) * 1000 + horizon_ms THEN
                RETURN hint;
            END IF;
        ELSIF t = 'string' THEN
            BEGIN
                ts := (p_value #>> '{}')::timestamptz;
            EXCEPTION WHEN data_exception THEN
                RETURN hint;
            END;
            IF ts < '1970-01-01 00:00:00+00' OR ts > now() + interval '36600 days' THEN
                RETURN hint;
            END IF;
        ELSE
            RETURN hint;
        END IF;
    ELSIF kind = 'exceptions' THEN
        RETURN hint;  -- JSON holds no exception class
    ELSIF kind = 'message' THEN
        IF t <> 'object' OR NOT p_value ?& ARRAY['queue_name', 'actor_name', 'args', 'kwargs', 'options']
           OR EXISTS (SELECT 1 FROM jsonb_object_keys(p_value) AS f(name)
                      WHERE f.name NOT IN ('queue_name', 'actor_name', 'args', 'kwargs', 'options', 'message_id',
                                           'message_timestamp')) THEN
            RETURN hint || ': it is not a message';
        END IF;
        IF jsonb_typeof(p_value->'queue_name') <> 'string' OR (p_value->>'queue_name') !~ '^[A-Za-z0-9_.-]{1,200}$' THEN
            RETURN hint || ': it has an invalid queue_name: use 1-200 letters, digits, dot, dash or underscore';
        END IF;
        IF jsonb_typeof(p_value->'actor_name') <> 'string' OR length(p_value->>'actor_name') NOT BETWEEN 1 AND 200 THEN
            RETURN hint || ': it has an invalid actor_name: use a string of 1-200 characters';
        END IF;
        IF jsonb_typeof(p_value->'args') <> 'array' OR jsonb_typeof(p_value->'kwargs') <> 'object' THEN
            RETURN hint || ': it needs args as a list and kwargs as an object';
        END IF;
        IF jsonb_typeof(p_value->'options') <> 'object' THEN
            RETURN hint || ': it needs options as an object';
        END IF;
        IF p_value ? 'message_id' AND jsonb_typeof(p_value->'message_id') <> 'string' THEN
            RETURN hint || ': it needs message_id as a string';
        END IF;
        IF p_value ? 'message_timestamp' AND jsonb_typeof(p_value->'message_timestamp') <> 'number' THEN
            RETURN hint || ': it needs message_timestamp as a number';
        END IF;
        IF p_depth > 100 THEN
            RETURN hint || ': it nests pipelines more than 100 deep';
        END IF;
        FOR k, v IN SELECT e.key, e.value FROM jsonb_each(p_value->'options') AS e LOOP
            inner_problem := neuron_tasks.option_problem_v1(k, v, p_depth + 1);
            IF inner_problem IS NOT NULL THEN
                RETURN format('%s: it has option %s=%s that %s', hint, k, left(v::text, 100), inner_problem);
            END IF;
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;

-- Enqueue from SQL, inside the caller's transaction: a rollback never runs the job.
-- The payload is Dramatiq's JSON message encoding (workers must use the JSON encoder).
-- options: priority (int), delay (ms), eta (timestamp or epoch ms), tenant, topic (must exist),
--          deadline (timestamp or epoch ms), unique_key + on_duplicate, max_retries, ...; each is
--          checked by option_problem_v1. queue_depth, tenant_policy and max_message_bytes are read
--          with setting_v1 (runtime setting > SET neuron_tasks.<key> > default).
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
    v_waiting  integer;
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
    SELECT count(*) INTO v_waiting FROM (
        SELECT 1 FROM neuron_tasks.messages
        WHERE queue_name = queue AND state IN ('pending', 'retrying')
        LIMIT v_depth) AS w;
    IF v_waiting >= v_depth THEN
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
