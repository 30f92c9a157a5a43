-- Index maintenance: measurements, defrag runs, tombstone pruning, snapshot swap, VACUUM candidates
-- (schema/007_defrag.sql).

-- name: dfg_try_lock
-- One defrag per index at a time (session advisory lock, released if the process dies).
SELECT pg_try_advisory_lock(hashtext('neuron_tasks.defrag:' || %(name)s)) AS ok;

-- name: dfg_unlock
-- Release the per-index defrag lock.
SELECT pg_advisory_unlock(hashtext('neuron_tasks.defrag:' || %(name)s)) AS ok;

-- name: dfg_abandon_runs
-- Runs left unfinished by a process that died (we hold the index's lock, so none is running).
UPDATE neuron_tasks.defrag_runs SET phase = 'abandoned', finished_at = now()
WHERE index_name = %(name)s AND finished_at IS NULL
RETURNING id, phase, rows_done, rows_total;

-- name: dfg_start_run
-- Open a run row.
INSERT INTO neuron_tasks.defrag_runs (index_name, forced, pid) VALUES (%(name)s, %(forced)s, pg_backend_pid())
RETURNING id;

-- name: dfg_progress
-- Record a run's phase and progress.
UPDATE neuron_tasks.defrag_runs SET phase = %(phase)s, rows_done = %(rows_done)s, rows_total = %(rows_total)s
WHERE id = %(id)s;

-- name: dfg_finish_run
-- Close a run with its action and report (a finished run shows all its rows done).
UPDATE neuron_tasks.defrag_runs
SET phase = %(phase)s, action = %(action)s, report = %(report)s, finished_at = now(),
    rows_done = CASE WHEN %(phase)s = 'done' THEN rows_total ELSE rows_done END
WHERE id = %(id)s;

-- name: dfg_runs
-- Recent runs of an index (or all when name is NULL).
SELECT * FROM neuron_tasks.defrag_runs
WHERE %(name)s::text IS NULL OR index_name = %(name)s
ORDER BY id DESC LIMIT %(limit)s;

-- name: dfg_tombstone_rows
-- Deleted rows an index still keeps in vector_items.
SELECT count(*) AS n FROM neuron_tasks.vector_items WHERE index_name = %(name)s AND deleted;

-- name: dfg_save_measure
-- Store an index's latest measurements (baseline_recall kept unless given or ef changed since).
INSERT INTO neuron_tasks.index_maintenance AS m
    (index_name, measured_at, live_count, deleted_count, tombstone_rows, tombstone_ratio, memory_ratio, ef,
     recall, baseline_recall, recall_drift, next_window)
VALUES (%(name)s, now(), %(live)s, %(deleted)s, %(tombstone_rows)s, %(tombstone_ratio)s, %(memory_ratio)s, %(ef)s,
        %(recall)s, %(baseline_recall)s, %(baseline_recall)s::float8 - %(recall)s::float8, %(next_window)s)
ON CONFLICT (index_name) DO UPDATE
SET measured_at = now(), live_count = excluded.live_count, deleted_count = excluded.deleted_count,
    tombstone_rows = excluded.tombstone_rows, tombstone_ratio = excluded.tombstone_ratio,
    memory_ratio = excluded.memory_ratio, ef = excluded.ef, recall = excluded.recall,
    baseline_recall = CASE WHEN m.ef IS DISTINCT FROM excluded.ef THEN excluded.recall
                           ELSE coalesce(excluded.baseline_recall, m.baseline_recall) END,
    recall_drift = CASE WHEN m.ef IS DISTINCT FROM excluded.ef THEN 0
                        ELSE coalesce(excluded.baseline_recall, m.baseline_recall) - excluded.recall END,
    next_window = excluded.next_window;

-- name: dfg_mark_maintained
-- Record that maintenance ran (and, for a rebuild, when).
UPDATE neuron_tasks.index_maintenance
SET last_maintenance = now(), last_action = %(action)s,
    last_rebuild = CASE WHEN %(action)s = 'rebuild' THEN now() ELSE last_rebuild END
WHERE index_name = %(name)s;

-- name: dfg_maintenance
-- The maintenance rows (all indexes when name is NULL).
SELECT * FROM neuron_tasks.index_maintenance
WHERE %(name)s::text IS NULL OR index_name = %(name)s ORDER BY index_name;

-- name: dfg_prune_tombstones
-- Delete tombstone rows no process needs: covered by the snapshot (a loading process learns
-- the delete from it) and older than the grace period (every running searcher has replayed it).
DELETE FROM neuron_tasks.vector_items v
USING neuron_tasks.vector_snapshots s
WHERE v.index_name = %(name)s AND s.index_name = v.index_name AND v.deleted
  AND v.seq <= s.seq AND v.updated_at < now() - make_interval(secs => %(grace_s)s);

-- name: dfg_lock_index
-- Block the index's writers until commit (they take the same row lock) and read its sequence.
SELECT data_seq, graph_version FROM neuron_tasks.vector_indexes WHERE name = %(name)s FOR UPDATE;

-- name: dfg_replace_snapshot
-- Store the rebuilt graph as the snapshot, whatever the old one's sequence.
INSERT INTO neuron_tasks.vector_snapshots AS s (index_name, seq, graph, live, elements, capacity, tombstones)
VALUES (%(name)s, %(seq)s, %(graph)s, %(live)s, %(elements)s, %(capacity)s, %(tombstones)s)
ON CONFLICT (index_name) DO UPDATE
SET seq = excluded.seq, graph = excluded.graph, live = excluded.live, elements = excluded.elements,
    capacity = excluded.capacity, tombstones = excluded.tombstones, created_at = now();

-- name: dfg_publish_graph
-- Publish the rebuilt graph: searchers that see graph_version change load the new snapshot.
UPDATE neuron_tasks.vector_indexes
SET graph_version = graph_version + 1, deleted_count = %(deleted)s, updated_at = now()
WHERE name = %(name)s
RETURNING graph_version;

-- name: dfg_graph_version
-- The published graph version of an index.
SELECT graph_version FROM neuron_tasks.vector_indexes WHERE name = %(name)s;

-- name: dfg_dead_tuples
-- The project's tables with their dead-tuple ratio (from pg_stat_user_tables).
SELECT relname AS table_name, n_live_tup, n_dead_tup,
       n_dead_tup::float / NULLIF(n_live_tup + n_dead_tup, 0) AS dead_ratio,
       pg_relation_size(relid) AS bytes, last_vacuum, last_autovacuum, last_analyze
FROM pg_stat_user_tables
WHERE schemaname = 'neuron_tasks'
ORDER BY dead_ratio DESC NULLS LAST, relname;

-- name: dfg_analyze_items
-- Refresh the planner statistics of the vector items.
ANALYZE neuron_tasks.vector_items;

-- name: dfg_installed
-- Does the defrag runs table exist (schema/007_defrag.sql applied)?
SELECT to_regclass('neuron_tasks.defrag_runs') IS NOT NULL;
