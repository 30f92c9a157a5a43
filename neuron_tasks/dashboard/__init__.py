"""The dashboard: operators' web UI and /metrics for the Postgres broker (`neuron-tasks dashboard`).

Needs the `dashboard` extra (starlette, jinja2, uvicorn, prometheus-client); the library never
imports this package.
"""

from __future__ import annotations

from .app import create_app
from .settings import DashboardSettings

__all__ = ["DashboardSettings", "create_app"]
