-- 004: vector indexes (hnswlib graphs whose vectors live here), query metrics and sampled
-- queries, tuner decisions, hybrid-search feedback; and the scheduler's leader registry,
-- job list and fire log.  Applied by `neuron-tasks db upgrade`.

-- One row per named HNSW index: build parameters, the published search parameters
-- (ef_search, alpha; params_version bumps on every publish so searchers re-read them),
-- the data sequence (bumps on every write; rows carry the seq of their last change),
-- our own counters (hnswlib's count includes deleted items), tuner overrides and alert.
CREATE TABLE neuron_tasks.vector_indexes (
    name              text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,100}$'),
    space             text             NOT NULL CHECK (space IN ('l2', 'ip', 'cosine')),
    dim               integer          NOT NULL CHECK (dim BETWEEN 1 AND 65536),
    m                 integer          NOT NULL DEFAULT 16 CHECK (m BETWEEN 2 AND 200),
    ef_construction   integer          NOT NULL DEFAULT 200 CHECK (ef_construction >= 1),
    ef_search         integer          NOT NULL DEFAULT 40 CHECK (ef_search >= 1),
    alpha             double precision NOT NULL DEFAULT 0.5 CHECK (alpha BETWEEN 0 AND 1),
    params_version    bigint           NOT NULL DEFAULT 1,
    data_seq          bigint           NOT NULL DEFAULT 0,
    live_count        bigint           NOT NULL DEFAULT 0,
    deleted_count     bigint           NOT NULL DEFAULT 0,
    target_recall     double precision CHECK (target_recall > 0 AND target_recall <= 1),
    target_latency_ms double precision CHECK (target_latency_ms > 0),
    tuner_strategy    text             CHECK (tuner_strategy IN ('search', 'step')),
    tuner_enabled     boolean          NOT NULL DEFAULT true,
    alert             text,
    alert_at          timestamptz,
    text_config       text             NOT NULL DEFAULT 'english',
    created_at        timestamptz      NOT NULL DEFAULT now(),
    updated_at        timestamptz      NOT NULL DEFAULT now()
);

-- The vectors (source of truth). Deleted items stay as tombstone rows (deleted, no vector)
-- so that every searching process replays the delete; `seq` orders changes per index.
CREATE TABLE neuron_tasks.vector_items (
    index_name text    NOT NULL REFERENCES neuron_tasks.vector_indexes (name) ON DELETE CASCADE,
    id         bigint  NOT NULL CHECK (id >= 0),
    seq        bigint  NOT NULL,
    deleted    boolean NOT NULL DEFAULT false,
    embedding  bytea,                              -- float32 little-endian, dim values
    metadata   jsonb   NOT NULL DEFAULT '{}'::jsonb,
    body       text,                               -- optional text, for hybrid search
    tsv        tsvector,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (index_name, id)
);
CREATE INDEX vector_items_seq_idx ON neuron_tasks.vector_items (index_name, seq);
CREATE INDEX vector_items_metadata_idx ON neuron_tasks.vector_items USING gin (metadata jsonb_path_ops);
CREATE INDEX vector_items_tsv_idx ON neuron_tasks.vector_items USING gin (tsv);

-- Graph snapshots (hnswlib save_index bytes), one per index: a restart loads it and
-- replays the rows changed after `seq` instead of rebuilding.
CREATE TABLE neuron_tasks.vector_snapshots (
    index_name text PRIMARY KEY REFERENCES neuron_tasks.vector_indexes (name) ON DELETE CASCADE,
    seq        bigint      NOT NULL,
    graph      bytea       NOT NULL,
    live       bigint      NOT NULL,
    elements   bigint      NOT NULL,               -- hnswlib's count: live + tombstones
    tombstones bytea       NOT NULL DEFAULT '',    -- int64 labels deleted but still in the graph
    capacity   bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every search: latency of the ANN step, k, ef, mode. Written in batches by the searcher.
CREATE TABLE neuron_tasks.vector_queries (
    query_id   uuid PRIMARY KEY,
    index_name text             NOT NULL,
    at         timestamptz      NOT NULL DEFAULT now(),
    k          integer          NOT NULL,
    ef         integer          NOT NULL,
    latency_ms double precision NOT NULL,
    mode       text             NOT NULL DEFAULT 'vector',
    alpha      double precision,
    filtered   boolean          NOT NULL DEFAULT false,
    sampled    boolean          NOT NULL DEFAULT false
);
CREATE INDEX vector_queries_index_at_idx ON neuron_tasks.vector_queries (index_name, at);

-- The sampled queries: the vector (and text) so the tuner can measure recall against a
-- brute-force answer; recall at the served ef is filled in by the tuner.
CREATE TABLE neuron_tasks.vector_query_samples (
    query_id      uuid PRIMARY KEY,
    index_name    text             NOT NULL,
    at            timestamptz      NOT NULL DEFAULT now(),
    k             integer          NOT NULL,
    ef            integer          NOT NULL,
    embedding     bytea            NOT NULL,
    query_text    text,
    result_ids    bigint[]         NOT NULL,
    exact_ids     bigint[],
    exact_seq     bigint,
    recall_at_10  double precision,
    recall_at_100 double precision,
    evaluated_at  timestamptz
);
CREATE INDEX vector_query_samples_index_at_idx ON neuron_tasks.vector_query_samples (index_name, at);

-- Relevance feedback on hybrid (or plain) searches: feedback(query_id, relevant_ids).
CREATE TABLE neuron_tasks.vector_feedback (
    query_id     uuid PRIMARY KEY,
    index_name   text        NOT NULL,
    relevant_ids bigint[]    NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vector_feedback_index_at_idx ON neuron_tasks.vector_feedback (index_name, at);

-- Every tuner decision, for ef and for alpha.
CREATE TABLE neuron_tasks.vector_tuner_decisions (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    index_name     text             NOT NULL,
    at             timestamptz      NOT NULL DEFAULT now(),
    parameter      text             NOT NULL CHECK (parameter IN ('ef', 'alpha')),
    strategy       text             NOT NULL,
    old_value      double precision NOT NULL,
    new_value      double precision NOT NULL,
    recall         double precision,           -- recall (or NDCG@10 for alpha) at new_value
    recall_before  double precision,           -- the same at old_value
    p50_ms         double precision,
    p90_ms         double precision,
    p95_ms         double precision,
    p99_ms         double precision,
    p95_before_ms  double precision,
    samples        integer          NOT NULL DEFAULT 0,
    evaluations    integer          NOT NULL DEFAULT 0,
    candidates     jsonb            NOT NULL DEFAULT '[]'::jsonb,
    alert          boolean          NOT NULL DEFAULT false,
    reason         text             NOT NULL
);
CREATE INDEX vector_tuner_decisions_index_idx ON neuron_tasks.vector_tuner_decisions (index_name, at);

-- Latency percentiles and recall per index over a window (the seed's monitoring query).
CREATE FUNCTION neuron_tasks.vector_query_stats_v1(window_len interval DEFAULT interval '10 minutes')
RETURNS TABLE (index_name text, queries bigint, ef_search integer, avg_latency_ms double precision,
               p50_ms double precision, p90_ms double precision, p95_ms double precision,
               p99_ms double precision, recall_at_10 double precision, recall_at_100 double precision,
               recall_samples bigint)
LANGUAGE sql STABLE AS $$
    SELECT i.name,
           count(qm.query_id),
           i.ef_search,
           avg(qm.latency_ms),
           percentile_cont(0.50) WITHIN GROUP (ORDER BY qm.latency_ms),
           percentile_cont(0.90) WITHIN GROUP (ORDER BY qm.latency_ms),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY qm.latency_ms),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY qm.latency_ms),
           r.recall_at_10, r.recall_at_100, coalesce(r.n, 0)
    FROM neuron_tasks.vector_indexes i
    LEFT JOIN neuron_tasks.vector_queries qm
           ON qm.index_name = i.name AND qm.at > now() - window_len
    LEFT JOIN LATERAL (
        SELECT avg(s.recall_at_10) AS recall_at_10, avg(s.recall_at_100) AS recall_at_100,
               count(s.recall_at_10) AS n
        FROM neuron_tasks.vector_query_samples s
        WHERE s.index_name = i.name AND s.at > now() - window_len AND s.evaluated_at IS NOT NULL
    ) r ON true
    GROUP BY i.name, i.ef_search, r.recall_at_10, r.recall_at_100, r.n
$$;

CREATE VIEW neuron_tasks.vector_query_stats AS
    SELECT * FROM neuron_tasks.vector_query_stats_v1(interval '10 minutes');

-- ---------------------------------------------------------------------------------------
-- Scheduler: nodes (leader election is a session advisory lock; this table only shows it),
-- the jobs the leader runs, and the fire log whose key makes every tick happen once.
CREATE TABLE neuron_tasks.scheduler_nodes (
    node_id      uuid PRIMARY KEY,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    leader_since timestamptz,
    stopped_at   timestamptz
);

CREATE TABLE neuron_tasks.scheduler_jobs (
    name       text PRIMARY KEY,
    kind       text        NOT NULL,           -- 'actor' (enqueued) or 'builtin' (one SQL statement)
    target     text        NOT NULL,           -- actor name, or builtin name
    queue_name text,
    trigger    text        NOT NULL,           -- 'every 1s' or 'cron */5 * * * *'
    next_fire  timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    node_id    uuid
);

CREATE TABLE neuron_tasks.scheduler_fires (
    job        text        NOT NULL,
    fire_time  timestamptz NOT NULL,
    fired_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    node_id    uuid        NOT NULL,
    message_id text,
    note       text,
    PRIMARY KEY (job, fire_time)
);
CREATE INDEX scheduler_fires_fired_at_idx ON neuron_tasks.scheduler_fires (fired_at);
