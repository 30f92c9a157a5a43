"""The LLM part: embedding, completion and rerank jobs, the result cache, HTTP and SQL tasks."""

from __future__ import annotations

from neuron_tasks.core.parts import Command, Demo, Page, Part, Retention, Tick

PART = Part(
    name="llm",
    title="LLM jobs",
    order=30,
    settings=("neuron_tasks.llm.settings:LlmSettings",),
    actors=("neuron_tasks.llm.actors",),
    retention=(Retention("neuron_tasks.llm_usage", "neuron_tasks.llm.usage:trim_usage"),),
    ticks=(
        Tick("neuron_tasks.cache_rotation", "scheduler_cache_rotation_every_s", actor="llm_cache_rotate",
             queue="llm", requires="neuron_tasks.llm_cache"),
    ),
    commands=(
        Command("llm", "neuron_tasks.llm.commands:app"),
        Command("cache", "neuron_tasks.llm.commands:cache_app"),
    ),
    pages=(
        Page("llm-cache", "LLM cache", "cached LLM results: the hit ratio, the cache's size against its limits, "
             "entries per model and what the next rotation evicts",
             tables=("neuron_tasks.llm_cache", "neuron_tasks.llm_usage", "neuron_tasks.llm_provider_state"),
             data="neuron_tasks.llm.page:load", template="neuron_tasks.llm:page.html", live=True, show_tables=False),
    ),
    tables=("neuron_tasks.llm_cache", "neuron_tasks.llm_usage", "neuron_tasks.llm_provider_state",
            "neuron_tasks.llm_cache_removals"),
    demos=(Demo("llm", "neuron_tasks.llm.commands:demo_phase", order=300),),
    close="neuron_tasks.llm.actors:close",
)
