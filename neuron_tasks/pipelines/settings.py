"""Settings of the pipelines (env NEURON_TASKS_PIPELINES_*)."""

from __future__ import annotations

from pydantic import Field

from neuron_tasks.config import NeuronSettings


class PipelineSettings(NeuronSettings):
    """Defaults < config file < NEURON_TASKS_PIPELINES_* < `neuron-tasks config set` (live)."""

    pipelines_retry_backoff_s: float = Field(
        default=5.0, gt=0, description="first delay before a failed record is tried again (doubles each time)"
    )
    pipelines_retry_backoff_max_s: float = Field(
        default=3600.0, gt=0, description="longest delay between two tries of a failed record"
    )
    pipelines_default_batch_size: int = Field(
        default=100, ge=1, le=10000, description="batch_size of a pipeline created without one"
    )
    pipelines_sync_slice_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="a sync job stops after the batch that passes this many seconds and enqueues its own "
                    "continuation (long backfills never meet the job time limit; other pipelines interleave)",
    )
    pipelines_sort_window: int = Field(
        default=1000, ge=1, le=100000,
        description="a sync reads up to this many due rows (at least batch_size) at a time and embeds their "
                    "changed texts sorted by length, batch_size per model call: less padding, same batches",
    )
    pipelines_llm_cache: bool = Field(
        default=False,
        description="syncs read and write the LLM cache; off by default: the destination's source_hash already "
                    "skips unchanged texts, and a large backfill would evict every other job's cache entries",
    )
