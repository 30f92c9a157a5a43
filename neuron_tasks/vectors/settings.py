"""Settings of vector search and the tuner (env NEURON_TASKS_VECTORS_* / NEURON_TASKS_TUNER_*).

Tuner defaults: a cycle every 60 s over up to 1000 sampled queries per index, recall target
0.95, p95 latency target 10 ms for the ANN step.
"""

from __future__ import annotations

from pydantic import Field

from neuron_tasks.config import NeuronSettings, restart_only


class VectorSettings(NeuronSettings):
    # env NEURON_TASKS_*, the TOML config file and runtime settings (see neuron_tasks/config.py)

    database_url: str | None = restart_only(default=None, description="PostgreSQL URL; unset = embedded PostgreSQL")
    vectors_default_ef: int = Field(default=40, ge=1, description="ef_search of a new index until the tuner moves it")
    vectors_default_m: int = Field(default=16, ge=2, le=200, description="HNSW M of a new index")
    vectors_default_ef_construction: int = Field(default=200, ge=1, description="HNSW ef_construction of a new index")
    vectors_sync_s: float = Field(
        default=0.5, ge=0.0, le=60.0,
        description="a searcher re-reads published ef/alpha and replays other processes' writes at most this often",
    )
    vectors_sample_rate: float = Field(
        default=0.1, ge=0.0, le=1.0, description="share of searches whose query vector is kept for recall measurement"
    )
    vectors_sample_size: int = Field(
        default=1000, ge=1, description="sampled queries kept per index and used per tuning cycle"
    )
    vectors_snapshot_every: int = Field(
        default=10_000, ge=0,
        description="save a graph snapshot after this many changed items since the last one (0 = only on save())",
    )
    vectors_metrics_flush_s: float = Field(default=0.5, gt=0, description="query metrics are written this often")
    vectors_metrics_retention_s: int = Field(default=86400, ge=60, description="keep per-query metrics this long")
    vectors_num_threads: int = Field(default=1, ge=1, description="hnswlib threads for bulk inserts")

    tuner_naptime_s: float = Field(default=60.0, gt=0, description="tuning cycle interval")
    tuner_target_recall: float = Field(default=0.95, gt=0, le=1, description="recall SLO (per index overridable)")
    tuner_target_latency_ms: float = Field(
        default=10.0, gt=0, description="p95 latency SLO of the ANN step in ms (per index overridable)"
    )
    tuner_strategy: str = Field(
        default="search", pattern="^(search|step)$",
        description="'search': measure candidate ef values and take the cheapest meeting both SLOs; "
        "'step': the simple baseline (x1.2 up when recall is low, x0.8 down when latency is high)",
    )
    tuner_max_evaluations: int = Field(default=10, ge=2, le=50, description="ef values measured per tuning cycle")
    tuner_min_ef: int = Field(default=10, ge=1, description="smallest ef the tuner sets (never below k)")
    tuner_max_ef: int = Field(default=1024, ge=2, description="largest ef the tuner sets")
    tuner_recall_margin: float = Field(
        default=0.01, ge=0, le=0.1,
        description="the tuner aims this much above the recall target: the sampled queries are not the queries "
        "to come (bench/tuner: with 0, a held-out set missed 0.95 by 0.004 after the shift)",
    )
    tuner_recall_confidence_z: float = Field(
        default=1.645, ge=0, le=5,
        description="an ef meets the recall target when mean recall minus z standard errors does "
        "(1.645: one-sided 95 percent; the sampled queries are not the queries to come)",
    )
    tuner_window_s: int = Field(default=3600, ge=1, description="sampled queries younger than this are used")
    tuner_min_samples: int = Field(default=20, ge=1, description="fewer samples than this: no decision")
    tuner_latency_queries: int = Field(
        default=200, ge=1, description="sampled queries timed one by one per candidate ef (latency percentiles)"
    )
    tuner_alpha_grid: int = Field(default=11, ge=2, le=101, description="alpha values tried for hybrid search")
    scheduler_tuner_every_s: float = restart_only(
        default=60.0, ge=1, description="how often the scheduler enqueues the vector tuner"
    )
