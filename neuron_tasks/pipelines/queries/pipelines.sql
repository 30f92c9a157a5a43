-- Named statements of the pipelines. The statements on a pipeline's own source and destination
-- tables are built with psycopg.sql where they run (engine.py, destinations.py, volume.py,
-- search.py): their table and column names are identifiers. Vector index destinations are read
-- and written through neuron_tasks.vectors.store.

-- name: pipeline_create
-- Create a pipeline through the SQL function (all checks and the backfill queueing are there).
SELECT neuron_tasks.create_pipeline(%(name)s, %(source)s, %(key)s, %(data)s, %(destination)s, %(steps)s,
    %(mode)s, %(interval)s::interval, %(batch_size)s)

-- name: pipeline_drop
-- Drop a pipeline (its triggers, backlog and errors; the destination when asked).
SELECT neuron_tasks.drop_pipeline(%(name)s, %(drop_destination)s)

-- name: pipeline_get
-- One pipeline's definition.
SELECT name, source_table, key_column, key_type, data_column, steps, destination, auto_processing,
       background_sync_interval, batch_size, status, last_error, last_sync_at, created_at, updated_at
FROM neuron_tasks.pipelines WHERE name = %(name)s

-- name: pipeline_update
-- Change a pipeline's mode, interval or batch size (NULL keeps the current value); false when
-- there is no such pipeline. Switching to live with changes waiting enqueues a sync.
SELECT neuron_tasks.update_pipeline(%(name)s, %(mode)s, %(interval)s::interval, %(batch_size)s)

-- name: pipeline_metrics
-- AIDB-style metrics of every pipeline (or one).
SELECT pipeline, auto_processing, table_unprocessed_rows, volume_scans_completed, count_source_records,
       count_destination_records, count_errors, status, last_sync_at, last_error
FROM neuron_tasks.pipeline_metrics
WHERE %(name)s::text IS NULL OR pipeline = %(name)s
ORDER BY pipeline

-- name: pipeline_errors
-- The per-record errors of a pipeline, most recent first.
SELECT key, error, attempts, failed_at FROM neuron_tasks.pipeline_errors
WHERE pipeline = %(name)s ORDER BY failed_at DESC LIMIT %(limit)s

-- name: pipeline_try_lock
-- Take the pipeline's advisory lock (session level) if free: one sync per pipeline at a time.
SELECT pg_try_advisory_lock(hashtext('neuron_tasks.pipeline'), hashtext(%(name)s))

-- name: pipeline_lock
-- Wait for the pipeline's advisory lock.
SELECT pg_advisory_lock(hashtext('neuron_tasks.pipeline'), hashtext(%(name)s))

-- name: pipeline_unlock
-- Release the pipeline's advisory lock.
SELECT pg_advisory_unlock(hashtext('neuron_tasks.pipeline'), hashtext(%(name)s))

-- name: pipeline_claim
-- The next batch of due backlog entries, oldest change first; skips entries a writer holds.
SELECT key, seq, attempts FROM neuron_tasks.pipeline_backlog
WHERE pipeline = %(name)s AND not_before <= now()
ORDER BY seq LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: pipeline_done
-- Remove the processed entries that did not change meanwhile (same seq) and their old errors.
WITH done AS (
    DELETE FROM neuron_tasks.pipeline_backlog b
    USING unnest(%(keys)s::text[], %(seqs)s::bigint[]) AS d(key, seq)
    WHERE b.pipeline = %(name)s AND b.key = d.key AND b.seq = d.seq
    RETURNING b.key
)
DELETE FROM neuron_tasks.pipeline_errors e USING done
WHERE e.pipeline = %(name)s AND e.key = done.key

-- name: pipeline_failed
-- Push a failed entry back with exponential backoff (unless it changed meanwhile).
UPDATE neuron_tasks.pipeline_backlog
SET attempts = attempts + 1,
    not_before = now() + make_interval(secs => least(%(backoff_max_s)s, %(backoff_s)s * 2 ^ attempts))
WHERE pipeline = %(name)s AND key = %(key)s AND seq = %(seq)s

-- name: pipeline_error_record
-- Store (or replace) a record's last error.
INSERT INTO neuron_tasks.pipeline_errors (pipeline, key, error, attempts)
VALUES (%(name)s, %(key)s, %(error)s, %(attempts)s)
ON CONFLICT (pipeline, key) DO UPDATE
SET error = excluded.error, attempts = excluded.attempts, failed_at = now()

-- name: pipeline_sync_ok
-- Mark a pipeline's sync as finished.
UPDATE neuron_tasks.pipelines SET status = 'ok', last_error = NULL, last_sync_at = now() WHERE name = %(name)s

-- name: pipeline_sync_failed
-- Mark a pipeline's sync as failed with its error.
UPDATE neuron_tasks.pipelines SET status = 'failed', last_error = %(error)s, last_sync_at = now()
WHERE name = %(name)s

-- name: pipeline_backlog_size
-- Entries waiting in a pipeline's backlog.
SELECT count(*) FROM neuron_tasks.pipeline_backlog WHERE pipeline = %(name)s

-- name: pipeline_enqueue_due
-- Enqueue a sync of each background pipeline whose interval has passed since its last sync, that
-- has due backlog entries, and no sync waiting or running already.
SELECT p.name, neuron_tasks.enqueue('pipelines', 'neuron_tasks.pipeline_sync', jsonb_build_array(p.name))
FROM neuron_tasks.pipelines p
WHERE p.auto_processing = 'background'
  AND (p.last_sync_at IS NULL OR p.last_sync_at + p.background_sync_interval <= now())
  AND EXISTS (SELECT 1 FROM neuron_tasks.pipeline_backlog b WHERE b.pipeline = p.name AND b.not_before <= now())
  AND NOT EXISTS (SELECT 1 FROM neuron_tasks.messages m
                  WHERE m.actor_name = 'neuron_tasks.pipeline_sync' AND m.state <> 'failed'
                    AND convert_from(m.payload, 'UTF8')::jsonb -> 'args' ->> 0 = p.name)
ORDER BY p.name

-- name: volume_create
-- Register a folder source (the destination table is created by the caller in the same transaction).
INSERT INTO neuron_tasks.pipeline_volumes (name, folder, pattern, chunk_size, chunk_overlap, steps, destination,
    background_sync_interval, batch_size)
VALUES (%(name)s, %(folder)s, %(pattern)s, %(chunk_size)s, %(chunk_overlap)s, %(steps)s, %(destination)s,
    %(interval)s::interval, %(batch_size)s)

-- name: volume_get
-- One folder source's definition.
SELECT name, folder, pattern, chunk_size, chunk_overlap, steps, destination, background_sync_interval, batch_size,
       scans_completed, status, last_error, last_sync_at
FROM neuron_tasks.pipeline_volumes WHERE name = %(name)s

-- name: volume_files
-- The state of a folder source's files (path -> mtime, sha256, chunks).
SELECT path, mtime, sha256, chunks FROM neuron_tasks.pipeline_volume_files WHERE volume = %(name)s

-- name: volume_file_put
-- Record a file's state after its chunks were written.
INSERT INTO neuron_tasks.pipeline_volume_files (volume, path, mtime, sha256, chunks)
VALUES (%(name)s, %(path)s, %(mtime)s, %(sha256)s, %(chunks)s)
ON CONFLICT (volume, path) DO UPDATE SET mtime = excluded.mtime, sha256 = excluded.sha256, chunks = excluded.chunks

-- name: volume_file_forget
-- Forget a removed file.
DELETE FROM neuron_tasks.pipeline_volume_files WHERE volume = %(name)s AND path = %(path)s

-- name: volume_scan_ok
-- Count a completed scan.
UPDATE neuron_tasks.pipeline_volumes
SET scans_completed = scans_completed + 1, status = 'ok', last_error = NULL, last_sync_at = now()
WHERE name = %(name)s

-- name: volume_scan_failed
-- Mark a folder scan as failed.
UPDATE neuron_tasks.pipeline_volumes SET status = 'failed', last_error = %(error)s, last_sync_at = now()
WHERE name = %(name)s

-- name: volume_drop
-- Forget a folder source (its files' state goes with it).
DELETE FROM neuron_tasks.pipeline_volumes WHERE name = %(name)s RETURNING destination

-- name: volume_enqueue_due
-- Enqueue a scan of each folder source whose interval has passed and that has no scan waiting.
SELECT v.name, neuron_tasks.enqueue('pipelines', 'neuron_tasks.pipeline_sync', jsonb_build_array(v.name))
FROM neuron_tasks.pipeline_volumes v
WHERE (v.last_sync_at IS NULL OR v.last_sync_at + v.background_sync_interval <= now())
  AND NOT EXISTS (SELECT 1 FROM neuron_tasks.messages m
                  WHERE m.actor_name = 'neuron_tasks.pipeline_sync' AND m.state <> 'failed'
                    AND convert_from(m.payload, 'UTF8')::jsonb -> 'args' ->> 0 = v.name)
ORDER BY v.name

-- name: pipeline_item_ids
-- For an index destination: each key's item id (the key for integer keys, else a 63-bit hash).
SELECT k.key, neuron_tasks.pipeline_item_id_v1(k.key, %(key_type)s) AS id
FROM unnest(%(keys)s::text[]) AS k(key)

-- name: pipeline_exists
-- Is there a table pipeline of this name?
SELECT EXISTS (SELECT 1 FROM neuron_tasks.pipelines WHERE name = %(name)s)

-- name: volume_exists
-- Is there a folder pipeline of this name?
SELECT EXISTS (SELECT 1 FROM neuron_tasks.pipeline_volumes WHERE name = %(name)s)

-- name: relation_exists
-- Does a table (or another relation) of this name exist?
SELECT to_regclass(%(name)s) IS NOT NULL

-- name: relation_name
-- A relation's name as Postgres prints it (schema-qualified and quoted where needed).
SELECT %(name)s::regclass::text

-- name: pipeline_continue
-- A sync job that stopped at its time slice hands the rest of the backlog to a new job.
SELECT neuron_tasks.enqueue('pipelines', 'neuron_tasks.pipeline_sync', jsonb_build_array(%(name)s::text))
