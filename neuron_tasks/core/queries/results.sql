-- The results backend: job results stored in PostgreSQL.

-- name: results_store
-- Store Dramatiq results (arrays of equal length); a later result for a key replaces it.
-- Committed without waiting for the WAL flush (synchronous_commit off for this transaction
-- only): the job's ack, committed later with a flush, makes this earlier commit durable too.
WITH async AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO neuron_tasks.results (key, value, expires_at)
SELECT r.key, r.value, now() + r.ttl_ms * interval '1 millisecond'
FROM unnest(%(keys)s::text[], %(values)b::bytea[], %(ttl_ms)s::bigint[]) AS r(key, value, ttl_ms), async
ON CONFLICT (key) DO UPDATE
SET value = excluded.value, stored_at = now(), expires_at = excluded.expires_at;

-- name: results_get
-- A result that has not expired.
SELECT value FROM neuron_tasks.results WHERE key = %(key)s AND expires_at > now();

-- name: results_purge
-- Delete up to `limit` expired results; returns how many.
WITH gone AS (
    DELETE FROM neuron_tasks.results
    WHERE key IN (SELECT key FROM neuron_tasks.results WHERE expires_at <= now() LIMIT %(limit)s)
    RETURNING 1)
SELECT count(*) FROM gone;
