-- 020: a finished message keeps the head of its payload, so the dashboard's page for it shows the
-- actor's arguments. The first 2,048 bytes: whole for most messages; for a longer one, the start
-- of its arguments. Written by the ack (queries/broker.sql) and, for cancelled messages, by the
-- two functions below, which are those of 016 with this column added and nothing else changed.
-- Trimmed with the rest of the history (trim_history).

-- Nullable, no default: adding it rewrites nothing; rows finished before it read NULL.
ALTER TABLE neuron_tasks.messages_history ADD COLUMN payload_head bytea;

CREATE OR REPLACE FUNCTION neuron_tasks.messages_cancel_ended_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE neuron_tasks.topic_slots SET holder = NULL, acquired_at = NULL WHERE holder = OLD.id;
    UPDATE neuron_tasks.messages_history
    SET outcome = 'cancelled', last_error = coalesce(last_error, OLD.last_error)
    WHERE id = OLD.id AND message_id = OLD.message_id;
    IF NOT FOUND THEN
        INSERT INTO neuron_tasks.messages_history
            (id, message_id, queue_name, actor_name, tenant, topic, priority, attempts, retries,
             enqueued_at, started_at, worker_id, outcome, last_error, payload_head)
        VALUES (OLD.id, OLD.message_id, OLD.queue_name, OLD.actor_name, OLD.tenant, OLD.topic, OLD.priority,
                OLD.attempts, OLD.retries, OLD.enqueued_at, OLD.started_at, OLD.lease_owner, 'cancelled',
                OLD.last_error, substring(OLD.payload FROM 1 FOR 2048));
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION neuron_tasks.cancel_messages(ids text[])
RETURNS TABLE (cancelled bigint, marked bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_row_ids    bigint[];
    v_found      bigint[];
    v_found_mids text[];
    v_unknown    text[];
    v_dead       text[];
BEGIN
    IF ids IS NULL OR cardinality(ids) = 0 OR array_position(ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'neuron_tasks.cancel_messages: name at least one message id (and no NULL)'
            USING ERRCODE = '22023';
    END IF;
    v_row_ids := ARRAY(SELECT x::bigint FROM unnest(ids) AS x WHERE x ~ '^[0-9]{1,18}$');
    -- Lock them first: a message being claimed right now is then seen running, and marked.
    SELECT coalesce(array_agg(f.id), '{}'), coalesce(array_agg(f.message_id), '{}'),
           coalesce(array_agg(f.message_id) FILTER (WHERE f.state = 'failed'), '{}')
      INTO v_found, v_found_mids, v_dead
      FROM (SELECT m.id, m.message_id, m.state FROM neuron_tasks.messages m
            WHERE m.message_id = ANY(ids) OR m.id = ANY(v_row_ids)
            ORDER BY m.id
            FOR UPDATE) AS f;
    v_unknown := ARRAY(SELECT x FROM unnest(ids) AS x
                       WHERE NOT (x = ANY(v_found_mids)) AND NOT (x = ANY(v_found::text[])));
    IF cardinality(v_unknown) > 0 THEN
        RAISE EXCEPTION 'neuron_tasks.cancel_messages: no waiting or running message %', array_to_string(v_unknown, ', ')
            USING HINT = 'it finished, was purged or cancelled, or was never enqueued; nothing was cancelled',
                  ERRCODE = 'P0002';
    END IF;
    IF cardinality(v_dead) > 0 THEN
        RAISE EXCEPTION 'neuron_tasks.cancel_messages: % is a dead letter, not waiting or running',
            array_to_string(v_dead, ', ')
            USING HINT = 'delete dead letters with `neuron-tasks dead-letters purge`; nothing was cancelled',
                  ERRCODE = '22023';
    END IF;

    WITH gone AS (
        DELETE FROM neuron_tasks.messages m
        WHERE m.id = ANY(v_found) AND m.state IN ('pending', 'retrying')
        RETURNING m.id, m.message_id, m.queue_name, m.actor_name, m.tenant, m.topic, m.priority, m.attempts,
                  m.retries, m.enqueued_at, m.started_at, m.last_error,
                  substring(m.payload FROM 1 FOR 2048) AS payload_head),
    freed AS (
        UPDATE neuron_tasks.topic_slots SET holder = NULL, acquired_at = NULL
        WHERE holder IN (SELECT g.id FROM gone g)),
    recorded AS (
        INSERT INTO neuron_tasks.messages_history
            (id, message_id, queue_name, actor_name, tenant, topic, priority, attempts, retries,
             enqueued_at, started_at, outcome, last_error, payload_head)
        SELECT g.id, g.message_id, g.queue_name, g.actor_name, g.tenant, g.topic, g.priority, g.attempts,
               g.retries, g.enqueued_at, g.started_at, 'cancelled', g.last_error, g.payload_head
        FROM gone g
        RETURNING 1)
    SELECT count(*) INTO cancelled FROM recorded;

    UPDATE neuron_tasks.messages m
    SET cancel_requested_at = coalesce(m.cancel_requested_at, now()), updated_at = now()
    WHERE m.id = ANY(v_found) AND m.state = 'running';
    GET DIAGNOSTICS marked = ROW_COUNT;
    RETURN NEXT;
END;
$$;
