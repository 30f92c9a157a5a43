-- Dashboard (neuron_tasks/dashboard): read-only views for operators, every one bounded so a page
-- stays fast with millions of messages: no unbounded count(*) on neuron_tasks.messages.

-- name: dash_queue_names
-- Every queue with live messages or recent history, by loose index scans (one probe per queue).
WITH RECURSIVE ready AS (
    (SELECT queue_name FROM neuron_tasks.messages
     WHERE state IN ('pending', 'retrying') ORDER BY queue_name LIMIT 1)
    UNION ALL
    SELECT (SELECT m.queue_name FROM neuron_tasks.messages m
            WHERE m.state IN ('pending', 'retrying') AND m.queue_name > r.queue_name
            ORDER BY m.queue_name LIMIT 1)
    FROM ready r WHERE r.queue_name IS NOT NULL
), dead AS (
    (SELECT queue_name FROM neuron_tasks.messages
     WHERE state = 'failed' ORDER BY queue_name LIMIT 1)
    UNION ALL
    SELECT (SELECT m.queue_name FROM neuron_tasks.messages m
            WHERE m.state = 'failed' AND m.queue_name > d.queue_name
            ORDER BY m.queue_name LIMIT 1)
    FROM dead d WHERE d.queue_name IS NOT NULL
), done AS (
    (SELECT queue_name FROM neuron_tasks.messages_history ORDER BY queue_name LIMIT 1)
    UNION ALL
    SELECT (SELECT h.queue_name FROM neuron_tasks.messages_history h
            WHERE h.queue_name > d.queue_name ORDER BY h.queue_name LIMIT 1)
    FROM done d WHERE d.queue_name IS NOT NULL
)
SELECT queue_name FROM ready WHERE queue_name IS NOT NULL
UNION SELECT queue_name FROM dead WHERE queue_name IS NOT NULL
UNION SELECT queue_name FROM done WHERE queue_name IS NOT NULL
UNION SELECT DISTINCT queue_name FROM neuron_tasks.messages WHERE state = 'running'
ORDER BY 1
LIMIT 500;

-- name: dash_queue_counts
-- Per queue: counts by state, each bounded by %(cap)s and read from a partial index (waiting =
-- pending + retrying, split by state only below the cap), and the age of the oldest due message.
SELECT q.queue_name, w.waiting, w.pending, w.retrying,
       (SELECT count(*) FROM (SELECT 1 FROM neuron_tasks.messages m
         WHERE m.queue_name = q.queue_name AND m.state = 'running' LIMIT %(cap)s) x) AS running,
       (SELECT count(*) FROM (SELECT 1 FROM neuron_tasks.messages m
         WHERE m.queue_name = q.queue_name AND m.state = 'failed' LIMIT %(cap)s) x) AS failed,
       (SELECT count(*) FROM (SELECT 1 FROM neuron_tasks.messages_history h
         WHERE h.queue_name = q.queue_name AND h.finished_at > now() - interval '1 hour'
         LIMIT %(cap)s) x) AS finished_last_hour,
       (SELECT greatest(extract(epoch FROM now() - min(m.eta)), 0)::float8 FROM neuron_tasks.messages m
         WHERE m.queue_name = q.queue_name AND m.state IN ('pending', 'retrying')) AS oldest_ready_age_s
FROM unnest(%(queues)s::text[]) AS q(queue_name)
CROSS JOIN LATERAL (  -- index-only: how many wait, up to the cap
    SELECT count(*) AS waiting FROM (
        SELECT 1 FROM neuron_tasks.messages m
        WHERE m.queue_name = q.queue_name AND m.state IN ('pending', 'retrying')
        ORDER BY m.eta LIMIT %(cap)s) x
) n
CROSS JOIN LATERAL (  -- the split by state, read only below the cap (above it: estimates)
    SELECT n.waiting,
           count(*) FILTER (WHERE x.state = 'pending') AS pending,
           count(*) FILTER (WHERE x.state = 'retrying') AS retrying
    FROM (SELECT m.state FROM neuron_tasks.messages m
          WHERE n.waiting < %(cap)s AND m.queue_name = q.queue_name AND m.state IN ('pending', 'retrying')
          ORDER BY m.eta LIMIT %(cap)s) x  -- ordered: read through messages_eta_idx, never a table scan
) w
ORDER BY q.queue_name;

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
       substring(m.payload from 1 for 600) AS payload_head
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
-- no index on ids: the ack path stays lean; the look is bounded).
SELECT * FROM (
    SELECT id, message_id, queue_name, actor_name, tenant, topic, priority, attempts, retries,
           enqueued_at, started_at, finished_at, worker_id
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
-- Worker processes with a status from their heartbeat (used when worker_status() is absent).
SELECT worker_name, host, pid, queues, started_at, heartbeat_at, stopped_at,
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
-- Columns of a table, in order (generic pages for parts that land later).
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

-- name: dash_ping
-- Health check.
SELECT 1 AS ok;

-- name: dash_local_timeout
-- statement_timeout and lock_timeout for the rest of the caller's transaction (milliseconds).
SELECT set_config('statement_timeout', %(ms)s, true), set_config('lock_timeout', %(ms)s, true);

-- name: dash_pipelines
-- Every pipeline (tables and folders, at most %(limit)s), read with bounds: the size of its source
-- and destination (main-fork bytes of every leaf partition, the planner's row estimate), their
-- rows counted by the view's own pipeline_count_v1 only where a relation holds at most
-- %(exact_bytes)s bytes, backlog, errors and files counted up to %(cap)s, and whether a sync holds
-- the pipeline's advisory lock (as pipeline_metrics decides Processing).
WITH k AS (
    SELECT p.name, 'table' AS kind, p.auto_processing AS mode, p.source_table AS source, p.destination,
           p.status AS raw_status, p.last_sync_at, left(p.last_error, 2000) AS last_error,
           NULL::bigint AS scans_completed, to_regclass(p.source_table) AS src,
           to_regclass(CASE WHEN NOT starts_with(p.destination, 'index:') THEN p.destination END) AS dst
    FROM neuron_tasks.pipelines p
    UNION ALL
    SELECT v.name, 'folder', 'background', v.folder, v.destination, v.status, v.last_sync_at,
           left(v.last_error, 2000), v.scans_completed, NULL::regclass,
           to_regclass(CASE WHEN NOT starts_with(v.destination, 'index:') THEN v.destination END)
    FROM neuron_tasks.pipeline_volumes v
    ORDER BY 1
    LIMIT %(limit)s
)
SELECT k.name, k.kind, k.mode, k.source, k.destination, k.raw_status, k.last_sync_at, k.last_error,
       k.scans_completed, extract(epoch FROM now() - k.last_sync_at)::float8 AS last_sync_age_s,
       s.bytes AS source_bytes, s.estimate AS source_estimate,
       d.bytes AS destination_bytes, d.estimate AS destination_estimate,
       CASE WHEN k.kind = 'folder' THEN
                (SELECT count(*) FROM (SELECT 1 FROM neuron_tasks.pipeline_volume_files f
                                       WHERE f.volume = k.name LIMIT %(cap)s) x)
            WHEN coalesce(s.bytes, 0) <= %(exact_bytes)s THEN neuron_tasks.pipeline_count_v1(k.source)
       END AS source_count,
       CASE WHEN coalesce(d.bytes, 0) <= %(exact_bytes)s THEN neuron_tasks.pipeline_count_v1(k.destination)
       END AS destination_count,
       CASE WHEN k.kind = 'table' THEN
                (SELECT count(*) FROM (SELECT 1 FROM neuron_tasks.pipeline_backlog b
                                       WHERE b.pipeline = k.name LIMIT %(cap)s) x)
       END AS backlog,
       (SELECT count(*) FROM (SELECT 1 FROM neuron_tasks.pipeline_errors e
                              WHERE e.pipeline = k.name LIMIT %(cap)s) x) AS errors,
       EXISTS (SELECT 1 FROM pg_locks l
               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                 AND l.classid = hashtext('neuron_tasks.pipeline')::oid
                 AND l.objid = hashtext(k.name)::oid) AS processing
FROM k
LEFT JOIN LATERAL (
    SELECT sum(pg_relation_size(c.oid))::bigint AS bytes,
           CASE WHEN bool_and(c.reltuples >= 0) THEN sum(c.reltuples)::bigint END AS estimate
    FROM (SELECT k.src AS relid UNION SELECT t.relid FROM pg_partition_tree(k.src) t WHERE t.isleaf) r
    JOIN pg_class c ON c.oid = r.relid AND c.relkind <> 'p'
) s ON true
LEFT JOIN LATERAL (
    SELECT sum(pg_relation_size(c.oid))::bigint AS bytes,
           CASE WHEN bool_and(c.reltuples >= 0) THEN sum(c.reltuples)::bigint END AS estimate
    FROM (SELECT k.dst AS relid UNION SELECT t.relid FROM pg_partition_tree(k.dst) t WHERE t.isleaf) r
    JOIN pg_class c ON c.oid = r.relid AND c.relkind <> 'p'
) d ON true
ORDER BY k.name;

-- name: dash_pipeline_metrics
-- The pipeline_metrics view (AIDB's columns, exact counts) for the named pipelines only: the
-- filter reaches inside the view, so no other pipeline's tables are counted.
SELECT pipeline, auto_processing, table_unprocessed_rows, volume_scans_completed, count_source_records,
       count_destination_records, count_errors, status, last_sync_at, left(last_error, 2000) AS last_error
FROM neuron_tasks.pipeline_metrics
WHERE pipeline = ANY(%(names)s::text[])
ORDER BY pipeline;

-- name: dash_pipeline_errors
-- The latest per-record errors of each named pipeline, %(limit)s each (index
-- pipeline_errors_latest, schema 009: a short index scan per pipeline).
SELECT p.name AS pipeline, e.key, left(e.error, 2000) AS error, e.attempts, e.failed_at,
       extract(epoch FROM now() - e.failed_at)::float8 AS age_s
FROM unnest(%(names)s::text[]) AS p(name)
CROSS JOIN LATERAL (
    SELECT x.key, x.error, x.attempts, x.failed_at FROM neuron_tasks.pipeline_errors x
    WHERE x.pipeline = p.name
    ORDER BY x.failed_at DESC
    LIMIT %(limit)s
) e
ORDER BY p.name, e.failed_at DESC, e.key;

-- name: dash_pipeline_sync_now
-- "Sync now": enqueue neuron_tasks.pipeline_sync(name) on queue pipelines for a table pipeline,
-- in SQL (neuron_tasks.enqueue); no row when there is no such pipeline (nothing enqueued).
SELECT p.name, neuron_tasks.enqueue('pipelines', 'neuron_tasks.pipeline_sync', jsonb_build_array(p.name)) AS message_id
FROM neuron_tasks.pipelines p
WHERE p.name = %(name)s;
