-- Dashboard (neuron_tasks/dashboard): read-only views for operators, every one bounded so a page
-- stays fast with millions of messages: no unbounded count(*) on neuron_tasks.messages.

-- name: dash_queue_names
-- Every queue with live messages (the counters of schema/014) or recent history (a loose index
-- scan: one probe per queue).
WITH RECURSIVE done AS (
    (SELECT queue_name FROM neuron_tasks.messages_history ORDER BY queue_name LIMIT 1)
    UNION ALL
    SELECT (SELECT h.queue_name FROM neuron_tasks.messages_history h
            WHERE h.queue_name > d.queue_name ORDER BY h.queue_name LIMIT 1)
    FROM done d WHERE d.queue_name IS NOT NULL
)
SELECT queue_name FROM neuron_tasks.queue_counters GROUP BY queue_name HAVING sum(n) <> 0
UNION SELECT queue_name FROM done WHERE queue_name IS NOT NULL
ORDER BY 1
LIMIT 500;

-- name: dash_queue_counts
-- Per queue: exact counts by state from the counters the database keeps (schema/014: a few rows
-- per queue, whatever the backlog); finished in the last hour bounded by %(cap)s; the age of the
-- oldest due message.
SELECT q.queue_name, w.waiting, w.pending, w.retrying, w.running, w.failed,
       (SELECT count(*) FROM (SELECT 1 FROM neuron_tasks.messages_history h
         WHERE h.queue_name = q.queue_name AND h.finished_at > now() - interval '1 hour'
         LIMIT %(cap)s) x) AS finished_last_hour,
       (SELECT CASE WHEN e.eta <= now() THEN extract(epoch FROM now() - e.eta)::float8 END
        FROM (SELECT m.eta FROM neuron_tasks.messages m  -- one index entry; NULL when nothing waiting is due
              WHERE m.queue_name = q.queue_name AND m.state IN ('pending', 'retrying')
              ORDER BY m.eta LIMIT 1) e) AS oldest_ready_age_s
FROM unnest(%(queues)s::text[]) AS q(queue_name)
CROSS JOIN LATERAL (
    SELECT coalesce(sum(c.n) FILTER (WHERE c.state IN ('pending', 'retrying')), 0)::bigint AS waiting,
           coalesce(sum(c.n) FILTER (WHERE c.state = 'pending'), 0)::bigint AS pending,
           coalesce(sum(c.n) FILTER (WHERE c.state = 'retrying'), 0)::bigint AS retrying,
           coalesce(sum(c.n) FILTER (WHERE c.state = 'running'), 0)::bigint AS running,
           coalesce(sum(c.n) FILTER (WHERE c.state = 'failed'), 0)::bigint AS failed
    FROM neuron_tasks.queue_counters c WHERE c.queue_name = q.queue_name
) w
ORDER BY q.queue_name;

-- name: dash_state_estimate
-- The planner's row estimate of one (queue, state) cell of the message table (no scan).
EXPLAIN (FORMAT JSON)
SELECT 1 FROM neuron_tasks.messages WHERE queue_name = %(queue)s AND state = %(state)s;

-- name: dash_table_estimate
-- The planner's row estimate of a table (pg_class.reltuples), -1 when never analysed.
SELECT c.reltuples::bigint AS estimate
FROM pg_class c
WHERE c.oid = to_regclass(%(table)s);

-- name: dash_now_minute
-- The database's current minute (the charts' time axis).
SELECT date_trunc('minute', now()) AS minute;

-- name: dash_finished_per_minute
-- Finished messages per minute since a minute (history's finished_at index; callers keep
-- completed minutes, so a refresh reads about two minutes of history).
SELECT date_trunc('minute', finished_at) AS minute, count(*) AS n
FROM neuron_tasks.messages_history
WHERE finished_at >= %(since)s
GROUP BY 1;

-- name: dash_failed_per_minute
-- Dead letters per minute of their failure since a minute (messages_dead_letters_idx).
SELECT date_trunc('minute', failed_at) AS minute, count(*) AS n
FROM neuron_tasks.messages
WHERE state = 'failed' AND failed_at >= %(since)s
GROUP BY 1;

-- name: dash_messages_window
-- The newest %(window)s messages below an id (a primary-key range scan), filtered afterwards,
-- so a selective filter never scans the whole table; the caller moves the window down.
SELECT m.id, m.message_id, m.queue_name, m.actor_name, m.state, m.priority, m.tenant, m.topic,
       m.attempts, m.retries, m.eta, m.enqueued_at, m.failed_at,
       left(m.last_error, 300) AS last_error,
       substring(m.payload from 1 for 2000) AS payload_head
FROM (SELECT * FROM neuron_tasks.messages
      WHERE id < %(before)s
      ORDER BY id DESC
      LIMIT %(window)s) m
WHERE (%(queue)s::text IS NULL OR m.queue_name = %(queue)s)
  AND (%(state)s::text IS NULL OR m.state = %(state)s)
  AND (%(actor)s::text IS NULL OR m.actor_name = %(actor)s)
  AND (%(tenant)s::text IS NULL OR m.tenant = %(tenant)s)
  AND (%(topic)s::text IS NULL OR m.topic = %(topic)s)
  AND (%(text)s::bytea IS NULL OR position(%(text)s::bytea IN m.payload) > 0)
ORDER BY m.id DESC
LIMIT %(limit)s;

-- name: dash_window_floor
-- The lowest id of the window below an id (where the next window starts).
SELECT min(id) AS floor FROM (
    SELECT id FROM neuron_tasks.messages WHERE id < %(before)s ORDER BY id DESC LIMIT %(window)s
) w;

-- name: dash_message_by_id
-- One live message by its row id, payload and errors included.
SELECT id, message_id, queue_name, actor_name, state, priority, eta, tenant, topic, deadline,
       fingerprint, attempts, retries, deaths, lease_owner, lease_expires_at, enqueued_at,
       started_at, updated_at, failed_at, last_error, errors, payload, octet_length(payload) AS payload_bytes
FROM neuron_tasks.messages
WHERE id = %(id)s;

-- name: dash_message_by_message_id
-- One live message by its Dramatiq message id (messages_message_id_idx).
SELECT id FROM neuron_tasks.messages WHERE message_id = %(message_id)s ORDER BY id DESC LIMIT 1;

-- name: dash_history_by_id
-- A finished message's history row, looked for among the newest %(window)s finished (history has
-- no index on ids: the ack path stays lean; the look is bounded), with its payload's first bytes.
SELECT * FROM (
    SELECT id, message_id, queue_name, actor_name, tenant, topic, priority, attempts, retries,
           enqueued_at, started_at, finished_at, worker_id, payload_head
    FROM neuron_tasks.messages_history
    ORDER BY finished_at DESC
    LIMIT %(window)s) h
WHERE h.id = %(id)s OR h.message_id = %(message_id)s
LIMIT 1;

-- name: dash_dead_letters
-- Dead letters, newest first below a (failed_at, id) cursor: a window of %(window)s read in index
-- order (messages_dead_letters_idx, or messages_failed_idx for one queue), filtered afterwards.
SELECT m.id, m.message_id, m.queue_name, m.actor_name, m.tenant, m.topic, m.attempts, m.retries,
       m.deaths, m.enqueued_at, m.failed_at, left(m.last_error, 300) AS last_error
FROM (SELECT * FROM neuron_tasks.messages
      WHERE state = 'failed'
        AND (%(queue)s::text IS NULL OR queue_name = %(queue)s)
        AND (%(after_at)s::timestamptz IS NULL OR (failed_at, id) < (%(after_at)s, %(after_id)s))
      ORDER BY failed_at DESC, id DESC
      LIMIT %(window)s) m
WHERE (%(actor)s::text IS NULL OR m.actor_name = %(actor)s)
  AND (%(tenant)s::text IS NULL OR m.tenant = %(tenant)s)
  AND (%(text)s::text IS NULL OR strpos(m.last_error, %(text)s) > 0)
ORDER BY m.failed_at DESC, m.id DESC
LIMIT %(limit)s;

-- name: dash_dead_letter_floor
-- The oldest (failed_at, id) of that window: where the next window starts.
SELECT failed_at, id FROM (
    SELECT failed_at, id FROM neuron_tasks.messages
    WHERE state = 'failed'
      AND (%(queue)s::text IS NULL OR queue_name = %(queue)s)
      AND (%(after_at)s::timestamptz IS NULL OR (failed_at, id) < (%(after_at)s, %(after_id)s))
    ORDER BY failed_at DESC, id DESC
    LIMIT %(window)s) w
ORDER BY failed_at, id
LIMIT 1;

-- name: dash_dead_letter_ids
-- Ids of the dead letters matching a filter (requeue / delete all matching), at most %(limit)s.
SELECT id FROM neuron_tasks.messages
WHERE state = 'failed'
  AND (%(queue)s::text IS NULL OR queue_name = %(queue)s)
  AND (%(actor)s::text IS NULL OR actor_name = %(actor)s)
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
  AND (%(text)s::text IS NULL OR strpos(last_error, %(text)s) > 0)
ORDER BY failed_at DESC, id DESC
LIMIT %(limit)s;

-- name: dash_delete_dead_letters
-- Delete the given dead letters (only rows still failed).
DELETE FROM neuron_tasks.messages WHERE id = ANY(%(ids)s) AND state = 'failed';

-- name: dash_workers_table
-- Worker processes with a status from their heartbeat.
SELECT worker_id, worker_name, host, pid, queues, started_at, heartbeat_at, stopped_at,
       CASE WHEN stopped_at IS NOT NULL THEN 'stopped'
            WHEN heartbeat_at < now() - %(stale_s)s * interval '1 second' THEN 'stale'
            ELSE 'running' END AS status,
       jobs_processed, jobs_failed,
       CASE WHEN jobs_processed > 0 THEN runtime_ms / jobs_processed END AS avg_runtime_ms,
       last_run,
       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s
FROM neuron_tasks.workers
WHERE stopped_at IS NULL OR stopped_at > now() - interval '1 hour'
ORDER BY stopped_at IS NOT NULL, started_at DESC
LIMIT 500;

-- name: dash_workers_alive
-- Worker processes whose heartbeat is fresh.
SELECT count(*) AS alive FROM neuron_tasks.workers
WHERE stopped_at IS NULL AND heartbeat_at > now() - %(stale_s)s * interval '1 second';

-- name: dash_function_exists
-- Whether a function of that name exists in schema neuron_tasks.
SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = 'neuron_tasks' AND p.proname = %(name)s) AS present;

-- name: dash_table_columns
-- Columns of a table, in order (the generic table sections of part pages).
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a
WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: dash_table_key
-- The single-column primary key of a table, if it has one (keyset paging of generic pages).
SELECT a.attname AS name
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indrelid = to_regclass(%(table)s) AND i.indisprimary AND i.indnkeyatts = 1;

-- name: dash_table_exists
-- Whether a table (schema-qualified) exists.
SELECT to_regclass(%(table)s) IS NOT NULL AS present;

-- name: dash_table_rows_by_key
-- The first rows of any table in the order of its one-column primary key {key}; `_cursor` is the
-- key as text (the next page's start). {key} and {table} are identifiers quoted by the caller.
SELECT *, {key}::text AS _cursor FROM {table} ORDER BY {key} LIMIT %(limit)s;

-- name: dash_table_rows_by_key_after
-- The rows after a key value (keyset paging on the primary key).
SELECT *, {key}::text AS _cursor FROM {table} WHERE {key} > %(after)s ORDER BY {key} LIMIT %(limit)s;

-- name: dash_table_rows_by_ctid
-- The first rows of a table without a one-column primary key, in physical order.
SELECT *, ctid::text AS _cursor FROM {table} ORDER BY ctid LIMIT %(limit)s;

-- name: dash_table_rows_by_ctid_after
-- The rows after a ctid (keyset paging in physical order).
SELECT *, ctid::text AS _cursor FROM {table} WHERE ctid > %(after)s::tid ORDER BY ctid LIMIT %(limit)s;

-- name: dash_ping
-- Health check.
SELECT 1 AS ok;

-- name: dash_result_by_key
-- A finished message's stored result (the results backend's row, by its message key).
SELECT value, stored_at, expires_at FROM neuron_tasks.results WHERE key = %(key)s AND expires_at > now();

-- name: dash_running_by_worker
-- What every live worker runs now: its running messages (messages_lease_owner_idx), oldest first.
SELECT m.lease_owner AS worker_id, m.id, m.message_id, m.queue_name, m.actor_name, m.tenant, m.topic,
       m.started_at, m.attempts, extract(epoch FROM now() - m.started_at)::float8 AS running_s,
       substring(m.payload from 1 for 2000) AS payload_head
FROM neuron_tasks.messages m
WHERE m.state = 'running' AND m.lease_owner = ANY(%(workers)s::uuid[])
ORDER BY m.started_at NULLS LAST, m.id
LIMIT %(limit)s;
