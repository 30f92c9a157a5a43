"""The pipelines part: source tables and folders kept embedded into a table or a vector index."""

from __future__ import annotations

from neuron_tasks.core.parts import Action, Command, Demo, Page, Part, Tick

PART = Part(
    name="pipelines",
    title="Pipelines",
    order=40,
    settings=("neuron_tasks.pipelines.settings:PipelineSettings",),
    actors=("neuron_tasks.pipelines.actors",),
    ticks=(
        # Every second the leader enqueues a sync of each pipeline whose interval has passed (one
        # statement; no message when nothing is due), also before any worker is up.
        Tick("neuron_tasks.pipelines", 1.0, run="neuron_tasks.pipelines.manage:tick",
             requires="neuron_tasks.pipeline_volumes"),
    ),
    commands=(Command("pipeline", "neuron_tasks.pipelines.commands:app"),),
    pages=(
        Page("pipelines", "Pipelines", "pipelines: backlog, source and destination counts, status, errors",
             tables=("neuron_tasks.pipelines", "neuron_tasks.pipeline_errors", "neuron_tasks.pipeline_backlog"),
             data="neuron_tasks.pipelines.page:load", template="neuron_tasks.pipelines:page.html",
             actions=(Action("sync", "neuron_tasks.pipelines.page:sync_action"),), live=True, show_tables=False),
    ),
    tables=("neuron_tasks.pipelines", "neuron_tasks.pipeline_backlog", "neuron_tasks.pipeline_errors",
            "neuron_tasks.pipeline_volumes", "neuron_tasks.pipeline_volume_files"),
    demos=(Demo("pipeline", "neuron_tasks.pipelines.commands:demo_phase", order=70),),
    below=("vectors", "llm"),
)
