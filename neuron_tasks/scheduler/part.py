"""The scheduler's Part: its settings, the retention tick that trims every part's tables, the
retention of its own fire log, its commands and its page."""

from __future__ import annotations

from neuron_tasks.core.parts import Command, Page, Part, Retention, Tick

PART = Part(
    name="scheduler",
    title="Scheduler",
    order=10,
    settings=("neuron_tasks.scheduler.settings:SchedulerSettings",),
    retention=(
        Retention("neuron_tasks.scheduler_fires", "neuron_tasks.scheduler.maintenance:trim_fires"),
        Retention("neuron_tasks.scheduler_nodes", "neuron_tasks.scheduler.maintenance:trim_nodes"),
    ),
    ticks=(
        Tick("neuron_tasks.retention", "scheduler_retention_every_s",
             run="neuron_tasks.scheduler.maintenance:retention"),
    ),
    commands=(
        Command("scheduler", "neuron_tasks.scheduler.commands:app"),
        Command("schedules", "neuron_tasks.scheduler.schedules:app"),
    ),
    pages=(
        Page("schedules", "Schedules", "periodic jobs with their next and last fire, the scheduler nodes (which "
             "one leads) and the fire log", tables=("neuron_tasks.scheduler_jobs", "neuron_tasks.scheduler_nodes",
                                                   "neuron_tasks.scheduler_fires"),
             data="neuron_tasks.scheduler.page:load", template="neuron_tasks.scheduler:page.html", live=True,
             show_tables=False),
    ),
    tables=("neuron_tasks.scheduler_jobs", "neuron_tasks.scheduler_nodes", "neuron_tasks.scheduler_fires"),
)
