"""`neuron-tasks scheduler`: run one scheduler node (leader election, periodic jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neuron_tasks.commandline import database_url, fail, settings

app = typer.Typer(
    help="Run a scheduler process: APScheduler on the elected leader fires every part's periodic jobs "
    "(the lease sweeper, retention and the maintenance of each installed part) and your periodic actors, "
    "no tick twice. Start several for failover; a standby takes over within about a second of the "
    "leader's death. It only enqueues: workers run the jobs, and every worker loads every part's actors "
    "by itself.\n\n"
    "Declare your periodic actors in MODULES (imported from the current directory or PYTHONPATH; name "
    "them to the workers too):\n\n"
    "    from neuron_tasks import periodic\n\n"
    "    @periodic(every=60)   # or cron=\"*/5 * * * *\"\n"
    "    @dramatiq.actor\n"
    "    def report() -> None: ...\n\n"
    "Ticks missed while no scheduler ran are not replayed: such a job fires once, late (within "
    "scheduler_misfire_grace_s); @periodic(..., catch_up=True) replays each missed tick.",
    invoke_without_command=True,
    # Options may follow the modules (`neuron-tasks scheduler myapp.jobs --no-builtins`), as for a command.
    context_settings={"allow_interspersed_args": True},
)


@app.callback(invoke_without_command=True)
def scheduler(
    ctx: typer.Context,
    modules: Annotated[list[str] | None, typer.Argument(
        help="Your modules declaring @periodic actors (from neuron_tasks import periodic).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML file of jobs (actor, every or cron, "
                                                "queue, args, kwargs).")] = None,
    no_builtins: Annotated[bool, typer.Option("--no-builtins", help="Only your jobs: none of the parts' "
                                              "periodic jobs (sweeper, retention, ...).")] = False,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    import logging

    from pydantic import ValidationError

    from neuron_tasks.errors import NeuronTasksError
    from neuron_tasks.scheduler.process import run
    from neuron_tasks.scheduler.settings import SchedulerSettings

    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    url = database_url()
    try:
        sched = SchedulerSettings()
        if no_builtins:
            sched = sched.model_copy(update={"scheduler_builtins": False})
        raise typer.Exit(run(url, list(modules or []), config, settings=sched, core=settings()))
    except (NeuronTasksError, ValidationError, ImportError) as exc:
        fail(str(exc))
