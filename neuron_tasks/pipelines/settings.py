"""Settings of the pipelines (env NEURON_TASKS_PIPELINES_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PipelineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEURON_TASKS_", extra="ignore")

    pipelines_retry_backoff_s: float = Field(
        default=5.0, gt=0, description="first delay before a failed record is tried again (doubles each time)"
    )
    pipelines_retry_backoff_max_s: float = Field(
        default=3600.0, gt=0, description="longest delay between two tries of a failed record"
    )
    pipelines_default_batch_size: int = Field(
        default=100, ge=1, le=10000, description="batch_size of a pipeline created without one"
    )
