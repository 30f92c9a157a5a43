"""The vectors part: HNSW indexes stored in PostgreSQL, search, the tuner and defrag."""

from __future__ import annotations

from neuron_tasks.core.parts import Command, Demo, Page, Part, Retention, Tick

PART = Part(
    name="vectors",
    title="Vector indexes",
    order=20,
    settings=("neuron_tasks.vectors.settings:VectorSettings", "neuron_tasks.vectors.defrag_settings:DefragSettings"),
    actors=("neuron_tasks.vectors.actors", "neuron_tasks.vectors.tuner_actors", "neuron_tasks.vectors.defrag_actors"),
    retention=(
        Retention("neuron_tasks.vector_queries", "neuron_tasks.vectors.maintenance:trim_queries"),
        Retention("neuron_tasks.vector_query_samples", "neuron_tasks.vectors.maintenance:trim_samples"),
        Retention("neuron_tasks.vector_feedback", "neuron_tasks.vectors.maintenance:trim_feedback"),
    ),
    ticks=(
        Tick("neuron_tasks.tuner", "scheduler_tuner_every_s", actor="neuron_tasks.tune_vector_indexes",
             queue="maintenance", requires="neuron_tasks.vector_indexes", skip_unless="vec_any_tuned_index"),
        Tick("neuron_tasks.defrag", "scheduler_defrag_every_s", actor="neuron_tasks.defrag_indexes",
             actor_setting="scheduler_defrag_actor", queue="maintenance", requires="neuron_tasks.defrag_runs"),
    ),
    commands=(
        Command("index", "neuron_tasks.vectors.commands:app"),
        Command("defrag", "neuron_tasks.vectors.defrag_commands:app"),
    ),
    pages=(
        Page("indexes", "Indexes", "HNSW indexes: ef_search, recall and latency, tuner decisions, defrag runs",
             tables=("neuron_tasks.vector_indexes", "neuron_tasks.vector_tuner_decisions", "neuron_tasks.defrag_runs"),
             data="neuron_tasks.vectors.page:tuner_charts", metrics="neuron_tasks.vectors.page:metric_families"),
    ),
    tables=("neuron_tasks.vector_indexes", "neuron_tasks.vector_items", "neuron_tasks.vector_snapshots",
            "neuron_tasks.vector_queries", "neuron_tasks.vector_query_samples", "neuron_tasks.vector_feedback",
            "neuron_tasks.vector_tuner_decisions", "neuron_tasks.index_maintenance", "neuron_tasks.defrag_runs"),
    demos=(
        Demo("index", "neuron_tasks.vectors.commands:demo_phase", order=60),
        Demo("defrag", "neuron_tasks.vectors.defrag_commands:demo_phase", order=65),
    ),
    below=("llm",),
)
