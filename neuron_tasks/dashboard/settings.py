"""Dashboard settings (env NEURON_TASKS_DASHBOARD_*); merged into the project's settings later."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from neuron_tasks.config import NeuronSettings, restart_only

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class DashboardSettings(NeuronSettings):
    # env NEURON_TASKS_*, the TOML config file and runtime settings (see neuron_tasks/config.py)

    dashboard_host: str = restart_only(
        default="127.0.0.1", description="address to bind; anything but loopback needs a token"
    )
    dashboard_port: int = restart_only(default=8787, ge=0, le=65535, description="port to bind (0 = any free port)")
    dashboard_allowed_hosts: Annotated[list[str], NoDecode] = restart_only(
        default_factory=list,
        description="Host names the dashboard answers to besides 127.0.0.1, localhost, [::1] and the bound address "
        "(comma-separated; name or name:port; * = any, only behind a proxy that checks Host)",
    )
    dashboard_token: str | None = Field(
        default=None, description="access token; required when binding beyond loopback, then needed on every request"
    )
    dashboard_refresh_s: int = Field(default=5, ge=0, le=3600, description="auto-refresh period of live pages")
    dashboard_page_size: int = Field(default=50, ge=1, le=500, description="rows per page")
    dashboard_count_cap: int = Field(
        default=10_000, ge=100, description="exact counts stop here; above it the planner's estimate is shown"
    )
    dashboard_scan_window: int = Field(
        default=20_000, ge=100, description="messages looked at per step when a filter is selective"
    )
    dashboard_stale_s: float = Field(default=30.0, gt=0, description="a worker silent this long is not alive")
    dashboard_pool_max_size: int = restart_only(default=8, ge=2, description="connections of the web process")

    @field_validator("dashboard_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [h.strip().lower() for h in value.split(",") if h.strip()]
        return value


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")
