-- 007: index maintenance (the seed's neurandefrag): per-index fragmentation measurements and
-- maintenance state, the log of defrag runs with their progress, and the graph version that
-- a rebuild publishes. Applied by `neuron-tasks db upgrade`.

-- Bumped when a rebuilt graph replaces the snapshot: a searching process that sees it change
-- loads the new snapshot (neuron_tasks.vectors.defrag.adopt) instead of replaying on the old graph.
ALTER TABLE neuron_tasks.vector_indexes ADD COLUMN IF NOT EXISTS graph_version bigint NOT NULL DEFAULT 1;

-- One row per index: the latest measurements and when maintenance may next rebuild it.
CREATE TABLE neuron_tasks.index_maintenance (
    index_name        text PRIMARY KEY REFERENCES neuron_tasks.vector_indexes (name) ON DELETE CASCADE,
    measured_at       timestamptz      NOT NULL DEFAULT now(),
    live_count        bigint           NOT NULL DEFAULT 0,
    deleted_count     bigint           NOT NULL DEFAULT 0,   -- tombstones: deletes not reused or rebuilt away
    tombstone_rows    bigint           NOT NULL DEFAULT 0,   -- deleted rows still in vector_items
    tombstone_ratio   double precision NOT NULL DEFAULT 0,   -- deleted / (live + deleted)
    memory_ratio      double precision,                      -- graph slots vs a fresh build's
    ef                integer,
    recall            double precision,                      -- recall@k at the current ef on the probe set
    baseline_recall   double precision,                      -- the same right after the last rebuild
    recall_drift      double precision,                      -- baseline_recall - recall
    last_maintenance  timestamptz,
    last_action       text,
    last_rebuild      timestamptz,
    next_window       timestamptz                            -- next start of the maintenance window
);

-- Every defrag run: what it did and, while it runs, its phase and progress.
CREATE TABLE neuron_tasks.defrag_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    index_name  text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    phase       text        NOT NULL DEFAULT 'measure',     -- measure, prune, build, replay, swap, done, failed, abandoned
    rows_done   bigint      NOT NULL DEFAULT 0,
    rows_total  bigint      NOT NULL DEFAULT 0,
    action      text,                                       -- none, cheap, rebuild, refused
    forced      boolean     NOT NULL DEFAULT false,
    pid         integer,
    report      jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX defrag_runs_index_idx ON neuron_tasks.defrag_runs (index_name, id);
