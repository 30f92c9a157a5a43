-- Vector indexes, query metrics, tuner decisions, hybrid feedback (schema/004_vectors.sql).

-- name: vec_create_index
-- Register a new index (fails if the name is taken).
INSERT INTO neuron_tasks.vector_indexes (name, space, dim, m, ef_construction, ef_search, text_config)
VALUES (%(name)s, %(space)s, %(dim)s, %(m)s, %(ef_construction)s, %(ef_search)s, %(text_config)s)
RETURNING *;

-- name: vec_drop_index
-- Drop an index with its items, snapshot, metrics and decisions (schema 009's function).
SELECT neuron_tasks.drop_vector_index(%(name)s)::int AS count;

-- name: vec_get_index
-- One index's definition, published parameters and counters.
SELECT * FROM neuron_tasks.vector_indexes WHERE name = %(name)s;

-- name: vec_list_indexes
-- Every index.
SELECT * FROM neuron_tasks.vector_indexes ORDER BY name;

-- name: vec_params
-- What a searcher polls: the published ef/alpha (params_version), the data sequence, and the
-- graph version (bumped when defrag publishes a rebuilt graph).
SELECT ef_search, alpha, params_version, data_seq, graph_version
FROM neuron_tasks.vector_indexes WHERE name = %(name)s;

-- name: vec_begin_write
-- Serialise writers of one index (row lock until commit) and take the next data sequence.
UPDATE neuron_tasks.vector_indexes SET data_seq = data_seq + 1, updated_at = now()
WHERE name = %(name)s
RETURNING data_seq, text_config;

-- name: vec_count_live
-- How many of these ids are live now (inside the write transaction, under the row lock).
SELECT count(*) FROM neuron_tasks.vector_items
WHERE index_name = %(name)s AND id = ANY(%(ids)s) AND NOT deleted;

-- name: vec_upsert_items
-- Insert or replace items (vector, metadata, text) at sequence `seq`.
INSERT INTO neuron_tasks.vector_items AS v (index_name, id, seq, deleted, embedding, metadata, body, tsv)
SELECT %(name)s, t.id, %(seq)s, false, t.embedding, coalesce(t.metadata, '{}'::jsonb), t.body,
       CASE WHEN t.body IS NULL THEN NULL ELSE to_tsvector(%(text_config)s::regconfig, t.body) END
FROM unnest(%(ids)s::bigint[], %(embeddings)s::bytea[], %(metadata)s::jsonb[], %(bodies)s::text[])
     AS t(id, embedding, metadata, body)
ON CONFLICT (index_name, id) DO UPDATE
SET seq = excluded.seq, deleted = false, embedding = excluded.embedding, metadata = excluded.metadata,
    body = excluded.body, tsv = excluded.tsv, updated_at = now();

-- name: vec_delete_items
-- Tombstone items (kept so every searcher replays the delete); returns the ids that were live.
UPDATE neuron_tasks.vector_items
SET deleted = true, seq = %(seq)s, embedding = NULL, body = NULL, tsv = NULL, updated_at = now()
WHERE index_name = %(name)s AND id = ANY(%(ids)s) AND NOT deleted
RETURNING id;

-- name: vec_update_counts
-- Our own counters: live items, and tombstones (deletes not yet reused by a later insert).
UPDATE neuron_tasks.vector_indexes
SET live_count = live_count + %(live_delta)s,
    deleted_count = greatest(0, deleted_count + %(deleted)s - %(reused)s)
WHERE name = %(name)s
RETURNING live_count, deleted_count;

-- name: vec_changes_since
-- Rows changed after `seq` (replayed by searchers and after a snapshot load), in order.
SELECT id, seq, deleted, embedding FROM neuron_tasks.vector_items
WHERE index_name = %(name)s AND seq > %(seq)s AND seq <= %(upto)s
ORDER BY seq, id;

-- name: vec_live_vectors
-- Every live vector of an index (rebuild, brute-force ground truth), in id order.
SELECT id, embedding FROM neuron_tasks.vector_items
WHERE index_name = %(name)s AND NOT deleted AND seq <= %(upto)s
ORDER BY id;

-- name: vec_filter_ids
-- Live ids whose metadata contains the filter document.
SELECT id FROM neuron_tasks.vector_items
WHERE index_name = %(name)s AND NOT deleted AND metadata @> %(filter)s::jsonb;

-- name: vec_item_details
-- Metadata and text of some items.
SELECT id, metadata, body FROM neuron_tasks.vector_items
WHERE index_name = %(name)s AND id = ANY(%(ids)s) AND NOT deleted;

-- name: vec_text_candidates
-- Full-text candidates for hybrid search: rank of the live items matching the query text.
SELECT id, ts_rank_cd(tsv, query) AS rank
FROM neuron_tasks.vector_items, websearch_to_tsquery(%(text_config)s::regconfig, %(text)s) AS query
WHERE index_name = %(name)s AND NOT deleted AND tsv @@ query
ORDER BY rank DESC, id
LIMIT %(limit)s;

-- name: vec_text_ranks
-- Full-text rank of given items for the query text (0 when they do not match).
SELECT id, coalesce(ts_rank_cd(tsv, websearch_to_tsquery(%(text_config)s::regconfig, %(text)s)), 0) AS rank
FROM neuron_tasks.vector_items
WHERE index_name = %(name)s AND id = ANY(%(ids)s) AND NOT deleted;

-- name: vec_save_snapshot
-- Store a graph snapshot unless a newer one is already there.
INSERT INTO neuron_tasks.vector_snapshots AS s (index_name, seq, graph, live, elements, capacity, tombstones)
VALUES (%(name)s, %(seq)s, %(graph)s, %(live)s, %(elements)s, %(capacity)s, %(tombstones)s)
ON CONFLICT (index_name) DO UPDATE
SET seq = excluded.seq, graph = excluded.graph, live = excluded.live, elements = excluded.elements,
    capacity = excluded.capacity, tombstones = excluded.tombstones, created_at = now()
WHERE s.seq < excluded.seq;

-- name: vec_load_snapshot
-- The latest graph snapshot of an index.
SELECT seq, graph, live, elements, capacity, tombstones, created_at FROM neuron_tasks.vector_snapshots
WHERE index_name = %(name)s;

-- name: vec_snapshot_info
-- Snapshot age and size, without the bytes.
SELECT seq, length(graph) AS bytes, live, elements, capacity, created_at FROM neuron_tasks.vector_snapshots
WHERE index_name = %(name)s;

-- name: vec_insert_queries
-- Query metrics, written in batches.
INSERT INTO neuron_tasks.vector_queries (query_id, index_name, at, k, ef, latency_ms, mode, alpha, filtered, sampled)
SELECT * FROM unnest(%(query_ids)s::uuid[], %(index_names)s::text[], %(ats)s::timestamptz[], %(ks)s::int[],
                     %(efs)s::int[], %(latencies)s::float8[], %(modes)s::text[], %(alphas)s::float8[],
                     %(filtered)s::bool[], %(sampled)s::bool[]);

-- name: vec_insert_sample
-- A sampled query: its vector, text and the ids it returned.
INSERT INTO neuron_tasks.vector_query_samples (query_id, index_name, at, k, ef, embedding, query_text, result_ids)
VALUES (%(query_id)s, %(index_name)s, %(at)s, %(k)s, %(ef)s, %(embedding)s, %(query_text)s, %(result_ids)s)
ON CONFLICT (query_id) DO NOTHING;

-- name: vec_recent_samples
-- The most recent sampled queries of an index (the tuner's workload).
SELECT query_id, k, ef, embedding, query_text, result_ids, exact_ids, exact_seq, evaluated_at
FROM neuron_tasks.vector_query_samples
WHERE index_name = %(name)s AND at > now() - make_interval(secs => %(window_s)s)
ORDER BY at DESC
LIMIT %(limit)s;

-- name: vec_set_sample_recall
-- The tuner's measurements for sampled queries: exact neighbours and recall at the served ef.
UPDATE neuron_tasks.vector_query_samples AS s
SET exact_ids = u.exact_ids::bigint[], exact_seq = %(seq)s, recall_at_10 = u.r10, recall_at_100 = u.r100,
    evaluated_at = now()
FROM unnest(%(query_ids)s::uuid[], %(exact_ids)s::text[], %(r10)s::float8[], %(r100)s::float8[])
     AS u(query_id, exact_ids, r10, r100)
WHERE s.query_id = u.query_id;

-- name: vec_publish_params
-- Publish new search parameters; searchers see params_version change within a second.
UPDATE neuron_tasks.vector_indexes
SET ef_search = %(ef)s, alpha = %(alpha)s, params_version = params_version + 1,
    alert = %(alert)s, alert_at = CASE WHEN %(alert)s::text IS NULL THEN NULL ELSE coalesce(alert_at, now()) END,
    updated_at = now()
WHERE name = %(name)s
RETURNING params_version;

-- name: vec_set_options
-- Per-index tuner overrides (NULL keeps the setting's default).
UPDATE neuron_tasks.vector_indexes
SET target_recall = %(target_recall)s, target_latency_ms = %(target_latency_ms)s,
    tuner_strategy = %(tuner_strategy)s, tuner_enabled = %(tuner_enabled)s, updated_at = now()
WHERE name = %(name)s;

-- name: vec_insert_decision
-- Record one tuner decision.
INSERT INTO neuron_tasks.vector_tuner_decisions
    (index_name, parameter, strategy, old_value, new_value, recall, recall_before, p50_ms, p90_ms, p95_ms, p99_ms,
     p95_before_ms, samples, evaluations, candidates, alert, reason)
VALUES (%(index_name)s, %(parameter)s, %(strategy)s, %(old_value)s, %(new_value)s, %(recall)s, %(recall_before)s,
        %(p50_ms)s, %(p90_ms)s, %(p95_ms)s, %(p99_ms)s, %(p95_before_ms)s, %(samples)s, %(evaluations)s,
        %(candidates)s, %(alert)s, %(reason)s)
RETURNING id, at;

-- name: vec_decisions
-- Recent tuner decisions of an index (or all when name is NULL).
SELECT * FROM neuron_tasks.vector_tuner_decisions
WHERE %(name)s::text IS NULL OR index_name = %(name)s
ORDER BY id DESC
LIMIT %(limit)s;

-- name: vec_query_stats
-- Percentiles and recall per index over a window.
SELECT * FROM neuron_tasks.vector_query_stats_v1(make_interval(secs => %(window_s)s))
WHERE %(name)s::text IS NULL OR index_name = %(name)s
ORDER BY index_name;

-- name: vec_insert_feedback
-- The caller's relevant results for a query.
INSERT INTO neuron_tasks.vector_feedback (query_id, index_name, relevant_ids)
VALUES (%(query_id)s, %(index_name)s, %(relevant_ids)s)
ON CONFLICT (query_id) DO UPDATE SET relevant_ids = excluded.relevant_ids, at = now();

-- name: vec_feedback_queries
-- Recent hybrid queries with feedback: vector, text and relevant ids (alpha tuning).
SELECT f.query_id, f.relevant_ids, s.k, s.embedding, s.query_text
FROM neuron_tasks.vector_feedback f
JOIN neuron_tasks.vector_query_samples s ON s.query_id = f.query_id
WHERE f.index_name = %(name)s AND s.query_text IS NOT NULL AND f.at > now() - make_interval(secs => %(window_s)s)
ORDER BY f.at DESC
LIMIT %(limit)s;

-- name: vec_trim_queries
-- Retention of query metrics.
DELETE FROM neuron_tasks.vector_queries WHERE at < now() - make_interval(secs => %(retention_s)s);

-- name: vec_trim_samples
-- Keep the newest `keep` sampled queries per index (those with feedback are kept while it is).
DELETE FROM neuron_tasks.vector_query_samples s
USING (SELECT query_id, row_number() OVER (PARTITION BY index_name ORDER BY at DESC) AS n
       FROM neuron_tasks.vector_query_samples) r
WHERE s.query_id = r.query_id AND r.n > %(keep)s
  AND NOT EXISTS (SELECT 1 FROM neuron_tasks.vector_feedback f WHERE f.query_id = s.query_id);

-- name: vec_trim_feedback
-- Retention of relevance feedback.
DELETE FROM neuron_tasks.vector_feedback WHERE at < now() - make_interval(secs => %(retention_s)s);

-- name: vec_sample_index
-- Which index a query id belongs to.
SELECT index_name FROM neuron_tasks.vector_queries WHERE query_id = %(query_id)s
UNION
SELECT index_name FROM neuron_tasks.vector_query_samples WHERE query_id = %(query_id)s
LIMIT 1;

-- name: vec_demo_latency
-- Served latency percentiles and served recall@10 per ef of an index over the last hour (demo, bench).
SELECT qm.ef, count(*) AS queries,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY qm.latency_ms) AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY qm.latency_ms) AS p95_ms,
       (SELECT avg(s.recall_at_10) FROM neuron_tasks.vector_query_samples s
        WHERE s.index_name = %(name)s AND s.ef = qm.ef AND s.at > now() - interval '1 hour') AS recall_at_10
FROM neuron_tasks.vector_queries qm
WHERE qm.index_name = %(name)s AND qm.at > now() - interval '1 hour'
GROUP BY qm.ef ORDER BY qm.ef;

-- name: vec_any_tuned_index
-- Is there a vector index for the tuner to tune?
SELECT EXISTS (SELECT 1 FROM neuron_tasks.vector_indexes WHERE tuner_enabled);

-- name: vec_page_tuner_history
-- The dashboard's tuner charts: ef decisions of the last day, per index, newest first.
SELECT index_name, at, new_value AS ef, recall, p95_ms, p99_ms
FROM neuron_tasks.vector_tuner_decisions
WHERE parameter = 'ef' AND at > now() - interval '1 day'
ORDER BY index_name, at DESC
LIMIT 2000;

-- name: vec_page_gauges
-- /metrics: per index, ef_search, the latest measured recall and fragmentation (tombstones / elements).
SELECT i.name, i.ef_search,
       (SELECT d.recall FROM neuron_tasks.vector_tuner_decisions d
        WHERE d.index_name = i.name AND d.parameter = 'ef' AND d.recall IS NOT NULL
        ORDER BY d.at DESC LIMIT 1)::float8 AS recall,
       CASE WHEN i.live_count + i.deleted_count > 0
            THEN i.deleted_count::float8 / (i.live_count + i.deleted_count) ELSE 0 END AS fragmentation
FROM neuron_tasks.vector_indexes i
ORDER BY i.name
LIMIT 1000;

-- name: vec_page_gauges_no_tuner
-- /metrics before the tuner's table exists: no recall.
SELECT i.name, i.ef_search, NULL::float8 AS recall,
       CASE WHEN i.live_count + i.deleted_count > 0
            THEN i.deleted_count::float8 / (i.live_count + i.deleted_count) ELSE 0 END AS fragmentation
FROM neuron_tasks.vector_indexes i
ORDER BY i.name
LIMIT 1000;

-- name: vec_index_dim
-- The dimension of an index (no row: no such index).
SELECT dim FROM neuron_tasks.vector_indexes WHERE name = %(name)s;

-- name: vec_item_metadata
-- Metadata of the live items among some ids.
SELECT id, metadata FROM neuron_tasks.vector_items
WHERE index_name = %(name)s AND id = ANY(%(ids)s) AND NOT deleted;

-- name: vec_repeatable_read
-- The caller's transaction (just begun) reads one consistent snapshot (rebuilds).
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;
