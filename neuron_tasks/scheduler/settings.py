"""Scheduler settings (env NEURON_TASKS_SCHEDULER_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from neuron_tasks.config import NeuronSettings, restart_only


class SchedulerSettings(NeuronSettings):
    # env NEURON_TASKS_*, the TOML config file and runtime settings (see neuron_tasks/config.py)

    scheduler_poll_s: float = Field(
        default=1.0, gt=0, le=60,
        description="a standby tries to take the leader lock this often; the leader checks its lock connection",
    )
    scheduler_misfire_grace_s: float = Field(
        default=60.0, ge=0,
        description="ticks missed (scheduler down, failover) up to this long ago still fire: once, late, or each "
        "one for a job with catch_up"
    )
    scheduler_max_catchup: int = Field(default=300, ge=1, description="most ticks of one job fired in one go")
    scheduler_builtins: bool = restart_only(
        default=True, description="run every part's periodic jobs (lease sweeper, retention, each part's maintenance)"
    )
    scheduler_sweeper_every_s: float = restart_only(default=10.0, ge=1, description="lease sweeper interval")
    scheduler_retention_every_s: float = restart_only(default=60.0, ge=1, description="retention interval")
    scheduler_modules: str = restart_only(
        default="", description="comma-separated modules to import for @periodic actors (besides the arguments)"
    )
    scheduler_config: Path | None = restart_only(default=None, description="TOML file of [[jobs]] to schedule")
    scheduler_fire_retention_s: int = Field(default=86400, ge=60, description="keep the fire log this long")
    scheduler_node_stale_s: float = Field(
        default=10.0, gt=0, description="a node silent this long is shown as gone by `neuron-tasks schedules`"
    )
