"""Settings of index maintenance (env NEURON_TASKS_DEFRAG_*). Defaults: a pass every 300 s,
tombstone rows pruned above 10000, a rebuild above a tombstone ratio of 0.30, rebuilds only in
the maintenance window 02:00-04:00 (in `defrag_timezone`)."""

from __future__ import annotations

from pydantic import Field

from neuron_tasks.config import NeuronSettings, restart_only


class DefragSettings(NeuronSettings):
    # env NEURON_TASKS_*, the TOML config file and runtime settings (see neuron_tasks/config.py)

    database_url: str | None = restart_only(default=None, description="PostgreSQL URL; unset = embedded PostgreSQL")
    defrag_naptime_s: float = Field(
        default=300.0, gt=0,
        description="for reference only: the scheduler fires the defrag job every "
        "NEURON_TASKS_SCHEDULER_DEFRAG_EVERY_S (same default); this value is not read by it")
    defrag_compact_threshold: int = Field(
        default=10_000, ge=0,
        description="tombstone rows in PostgreSQL above which the cheap pass prunes them")
    defrag_fragmentation_threshold: float = Field(
        default=0.30, gt=0, le=1,
        description="tombstone ratio (deleted / (live + deleted)) above which "
        "the index is rebuilt (inside the maintenance window, or when forced)")
    defrag_recall_drift_threshold: float = Field(
        default=0.02, gt=0, le=1,
        description="recall drop on the probe set since the last rebuild that also counts as fragmented")
    defrag_maintenance_window: str = Field(
        default="02:00-04:00", pattern=r"^\d{2}:\d{2}-\d{2}:\d{2}$",
        description="HH:MM-HH:MM (may wrap midnight) when full rebuilds may run")
    defrag_timezone: str = Field(default="UTC", description="time zone of the maintenance window (IANA name)")
    defrag_probe_queries: int = Field(default=200, ge=10, description="fixed probe queries for recall measurement")
    defrag_probe_k: int = Field(default=10, ge=1, description="k of the recall measurement (recall@k)")
    defrag_tombstone_grace_s: float = Field(
        default=3600.0, ge=0,
        description="tombstone rows younger than this are kept (a running searcher may not have replayed them)")
    defrag_vacuum_dead_ratio: float = Field(
        default=0.20, gt=0, le=1, description="VACUUM (ANALYZE) a neuron_tasks table above this dead-tuple ratio")
    defrag_vacuum_min_dead: int = Field(
        default=1000, ge=0, description="... and at least this many dead tuples")
    defrag_build_batch: int = Field(default=5000, ge=100, description="rows per batch while rebuilding")
    scheduler_defrag_every_s: float = restart_only(
        default=300.0, ge=1, description="how often the scheduler enqueues index defrag"
    )
    scheduler_defrag_actor: str = restart_only(
        default="neuron_tasks.defrag_indexes",
        description="actor enqueued on the maintenance queue for defrag, once neuron_tasks.defrag_runs exists",
    )
