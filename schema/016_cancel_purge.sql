-- 016: cancel messages and purge queues (docs/semantics.md#cancel-and-purge).
-- A waiting message that is cancelled leaves the queue at once and is recorded in the history as
-- cancelled. A running one is marked (cancel_requested_at): its job may ask whether it was
-- cancelled (neuron_tasks.cancelled()), and however it ends it is recorded as cancelled and never
-- runs again. Both functions are for neuron_tasks_admin only.

ALTER TABLE neuron_tasks.messages ADD COLUMN cancel_requested_at timestamptz;

-- How a message left the queue: finished, or cancelled (with its last error, if it raised one).
ALTER TABLE neuron_tasks.messages_history
    ADD COLUMN outcome text NOT NULL DEFAULT 'finished' CHECK (outcome IN ('finished', 'cancelled')),
    ADD COLUMN last_error text;

-- A marked message left the hot table (acked, or deleted by the trigger below): its history row
-- says cancelled, written here when the statement that deleted it wrote none; its topic slot is free.
CREATE FUNCTION neuron_tasks.messages_cancel_ended_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE neuron_tasks.topic_slots SET holder = NULL, acquired_at = NULL WHERE holder = OLD.id;
    UPDATE neuron_tasks.messages_history
    SET outcome = 'cancelled', last_error = coalesce(last_error, OLD.last_error)
    WHERE id = OLD.id AND message_id = OLD.message_id;
    IF NOT FOUND THEN
        INSERT INTO neuron_tasks.messages_history
            (id, message_id, queue_name, actor_name, tenant, topic, priority, attempts, retries,
             enqueued_at, started_at, worker_id, outcome, last_error)
        VALUES (OLD.id, OLD.message_id, OLD.queue_name, OLD.actor_name, OLD.tenant, OLD.topic, OLD.priority,
                OLD.attempts, OLD.retries, OLD.enqueued_at, OLD.started_at, OLD.lease_owner, 'cancelled',
                OLD.last_error);
    END IF;
    RETURN NULL;
END;
$$;

-- A marked message that would wait or run again (retry, dead letter, throttled, given back at
-- shutdown, its worker died) is removed instead: the delete trigger records it as cancelled.
CREATE FUNCTION neuron_tasks.messages_cancel_returned_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM neuron_tasks.messages WHERE id = NEW.id;
    RETURN NULL;
END;
$$;

-- Only marked rows fire them: the WHEN clause is all that unmarked messages cost.
CREATE TRIGGER messages_cancel_ended
    AFTER DELETE ON neuron_tasks.messages
    FOR EACH ROW WHEN (OLD.cancel_requested_at IS NOT NULL)
    EXECUTE FUNCTION neuron_tasks.messages_cancel_ended_v1();
CREATE TRIGGER messages_cancel_returned
    AFTER UPDATE OF state ON neuron_tasks.messages
    FOR EACH ROW WHEN (NEW.cancel_requested_at IS NOT NULL AND NEW.state <> 'running')
    EXECUTE FUNCTION neuron_tasks.messages_cancel_returned_v1();

-- Cancel messages by message id (or row id). Waiting ones (pending, retrying) leave the queue
-- and are recorded as cancelled; running ones are marked. Refuses, changing nothing, when an id
-- names no live message (finished, purged, never enqueued) or names a dead letter.
CREATE FUNCTION neuron_tasks.cancel_messages(ids text[])
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
                  m.retries, m.enqueued_at, m.started_at, m.last_error),
    freed AS (
        UPDATE neuron_tasks.topic_slots SET holder = NULL, acquired_at = NULL
        WHERE holder IN (SELECT g.id FROM gone g)),
    recorded AS (
        INSERT INTO neuron_tasks.messages_history
            (id, message_id, queue_name, actor_name, tenant, topic, priority, attempts, retries,
             enqueued_at, started_at, outcome, last_error)
        SELECT g.id, g.message_id, g.queue_name, g.actor_name, g.tenant, g.topic, g.priority, g.attempts,
               g.retries, g.enqueued_at, g.started_at, 'cancelled', g.last_error
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

-- Purge a queue: delete its waiting messages (pending, retrying) matching the filters; with
-- 'failed' in `states` its dead letters too; with 'running' its running messages are marked as
-- cancelled (a running job is never stopped half-way). Purged messages leave no history row.
CREATE FUNCTION neuron_tasks.purge_queue(queue text, actor text DEFAULT NULL, tenant text DEFAULT NULL,
                                         states text[] DEFAULT ARRAY['pending', 'retrying'])
RETURNS TABLE (purged bigint, marked bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_bad text[];
BEGIN
    IF purge_queue.queue IS NULL THEN
        RAISE EXCEPTION 'neuron_tasks.purge_queue: name the queue to purge' USING ERRCODE = '22023';
    END IF;
    IF purge_queue.states IS NULL OR cardinality(purge_queue.states) = 0 THEN
        RAISE EXCEPTION 'neuron_tasks.purge_queue: name at least one state'
            USING HINT = 'states are pending, retrying, running and failed', ERRCODE = '22023';
    END IF;
    v_bad := ARRAY(SELECT coalesce(s, 'NULL') FROM unnest(purge_queue.states) AS s
                   WHERE s IS NULL OR s NOT IN ('pending', 'retrying', 'running', 'failed'));
    IF cardinality(v_bad) > 0 THEN
        RAISE EXCEPTION 'neuron_tasks.purge_queue: unknown state %', array_to_string(v_bad, ', ')
            USING HINT = 'states are pending, retrying, running and failed', ERRCODE = '22023';
    END IF;

    WITH gone AS (
        DELETE FROM neuron_tasks.messages m
        WHERE m.queue_name = purge_queue.queue
          AND m.state = ANY(purge_queue.states) AND m.state <> 'running'
          AND (purge_queue.actor IS NULL OR m.actor_name = purge_queue.actor)
          AND (purge_queue.tenant IS NULL OR m.tenant = purge_queue.tenant)
        RETURNING m.id),
    freed AS (
        UPDATE neuron_tasks.topic_slots SET holder = NULL, acquired_at = NULL
        WHERE holder IN (SELECT g.id FROM gone g))
    SELECT count(*) INTO purged FROM gone;

    marked := 0;
    IF 'running' = ANY(purge_queue.states) THEN
        UPDATE neuron_tasks.messages m
        SET cancel_requested_at = coalesce(m.cancel_requested_at, now()), updated_at = now()
        WHERE m.queue_name = purge_queue.queue AND m.state = 'running'
          AND (purge_queue.actor IS NULL OR m.actor_name = purge_queue.actor)
          AND (purge_queue.tenant IS NULL OR m.tenant = purge_queue.tenant);
        GET DIAGNOSTICS marked = ROW_COUNT;
    END IF;
    RAISE LOG 'neuron_tasks.purge_queue: queue %, actor %, tenant %, states %: % deleted, % running marked',
        purge_queue.queue, coalesce(purge_queue.actor, '*'), coalesce(purge_queue.tenant, '*'),
        purge_queue.states, purged, marked;
    RETURN NEXT;
END;
$$;

COMMENT ON FUNCTION neuron_tasks.cancel_messages(text[]) IS
    'Cancel messages: waiting ones leave the queue (history: cancelled), running ones are marked.';
COMMENT ON FUNCTION neuron_tasks.purge_queue(text, text, text, text[]) IS
    'Delete the waiting messages of a queue matching actor, tenant and states; mark running ones if asked.';

REVOKE ALL ON FUNCTION neuron_tasks.cancel_messages(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION neuron_tasks.purge_queue(text, text, text, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION neuron_tasks.cancel_messages(text[]) TO neuron_tasks_admin;
GRANT EXECUTE ON FUNCTION neuron_tasks.purge_queue(text, text, text, text[]) TO neuron_tasks_admin;

-- The monitoring views count cancelled messages apart from finished ones (job_counts: a row of its own;
-- tenant_stats: finished only).
CREATE OR REPLACE VIEW neuron_tasks.job_counts AS
    SELECT state AS status, count(*)::bigint AS jobs FROM neuron_tasks.messages GROUP BY state
    UNION ALL
    SELECT v.status, v.jobs
    FROM (SELECT count(*) FILTER (WHERE outcome = 'finished')::bigint AS finished,
                 count(*) FILTER (WHERE outcome = 'cancelled')::bigint AS cancelled
          FROM neuron_tasks.messages_history) AS h
    CROSS JOIN LATERAL (VALUES ('finished', h.finished), ('cancelled', h.cancelled)) AS v(status, jobs);

CREATE OR REPLACE VIEW neuron_tasks.tenant_stats AS
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
        FROM neuron_tasks.messages_history WHERE outcome = 'finished' GROUP BY 1)
    SELECT coalesce(live.tenant, done.tenant) AS tenant,
           coalesce(live.pending, 0) AS pending, coalesce(live.running, 0) AS running,
           coalesce(live.retrying, 0) AS retrying, coalesce(live.failed, 0) AS failed,
           coalesce(done.finished, 0) AS finished, done.avg_completion_s
    FROM live FULL JOIN done ON live.tenant = done.tenant;
