"""`neuron-tasks scheduler`: build the job list, then run one scheduler node until SIGTERM/SIGINT."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from neuron_tasks.config import Settings
from neuron_tasks.errors import ConfigurationError
from neuron_tasks.scheduler.jobs import REGISTRY, ScheduledJob, load_config, part_jobs
from neuron_tasks.scheduler.node import SchedulerNode
from neuron_tasks.scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)


def build_jobs(url: str, modules: list[str], config: Path | None, settings: SchedulerSettings,
               core: Settings) -> list[ScheduledJob]:
    """The parts' periodic jobs, then @periodic actors of the imported modules, then the config file's jobs."""
    jobs: list[ScheduledJob] = []
    if settings.scheduler_builtins:
        jobs += part_jobs(settings.model_dump())
    modules = [*modules, *(m.strip() for m in settings.scheduler_modules.split(",") if m.strip())]
    if modules:
        import dramatiq

        from neuron_tasks import PostgresBroker

        # Actor modules bind to the global broker when imported; the scheduler only enqueues.
        dramatiq.set_broker(PostgresBroker(url, settings=core))
        import_modules(modules)
    jobs += list(REGISTRY.values())
    path = config or settings.scheduler_config
    if path is not None:
        jobs += load_config(Path(path))
    return jobs


def import_modules(modules: list[str]) -> None:
    """Import the user's modules as `dramatiq` and `neuron-tasks worker` do: the current directory
    first on the path, then PYTHONPATH and the installed packages."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(f"cannot import {name!r} ({exc}); modules are imported from the current "
                                     f"directory ({cwd}) and PYTHONPATH") from exc


def run(url: str, modules: list[str], config: Path | None = None, *, settings: SchedulerSettings | None = None,
        core: Settings | None = None, on_start: Any = None) -> int:
    settings = settings or SchedulerSettings()
    core = core or Settings(database_url=url)
    node = SchedulerNode(url, build_jobs(url, modules, config, settings, core), settings=settings, core=core)

    def stop(signum: int, _frame: object) -> None:
        log.info("scheduler: signal %d, stopping", signum)
        node.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if on_start is not None:
        on_start(node)
    node.run()
    return 0
