-- The pipelines page of the dashboard: bounded reads under a local timeout, and "Sync now".

-- name: pipeline_page_timeout
-- statement_timeout and lock_timeout for the rest of the caller's transaction (milliseconds).
SELECT set_config('statement_timeout', %(ms)s, true), set_config('lock_timeout', %(ms)s, true);

-- name: pipeline_page_rows
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

-- name: pipeline_page_metrics
-- The pipeline_metrics view (AIDB's columns, exact counts) for the named pipelines only: the
-- filter reaches inside the view, so no other pipeline's tables are counted.
SELECT pipeline, auto_processing, table_unprocessed_rows, volume_scans_completed, count_source_records,
       count_destination_records, count_errors, status, last_sync_at, left(last_error, 2000) AS last_error
FROM neuron_tasks.pipeline_metrics
WHERE pipeline = ANY(%(names)s::text[])
ORDER BY pipeline;

-- name: pipeline_page_errors
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

-- name: pipeline_page_sync_now
-- "Sync now": enqueue neuron_tasks.pipeline_sync(name) on queue pipelines for a table pipeline,
-- in SQL (neuron_tasks.enqueue); no row when there is no such pipeline (nothing enqueued).
SELECT p.name, neuron_tasks.enqueue('pipelines', 'neuron_tasks.pipeline_sync', jsonb_build_array(p.name)) AS message_id
FROM neuron_tasks.pipelines p
WHERE p.name = %(name)s;
