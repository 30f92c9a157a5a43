"""The queue's own Part: its settings, maintenance and dashboard pages (see parts.py)."""

from __future__ import annotations

from neuron_tasks.core.parts import Page, Part, Retention, Tick

PART = Part(
    name="queue",
    title="Queue",
    order=0,
    settings=("neuron_tasks.config:Settings",),
    retention=(
        Retention("neuron_tasks.messages_history", "neuron_tasks.core.maintenance:trim_history"),
        Retention("neuron_tasks.messages", "neuron_tasks.core.maintenance:trim_dead_letters"),
        Retention("neuron_tasks.tenant_usage", "neuron_tasks.core.maintenance:trim_tenant_usage"),
    ),
    ticks=(
        # Runs on the scheduler's leader even when no worker is alive to sweep.
        Tick("neuron_tasks.lease_sweeper", "scheduler_sweeper_every_s", run="neuron_tasks.core.maintenance:sweep_tick"),
    ),
    pages=(
        Page("tenants", "Tenants", "per-tenant QPS and token budgets, their buckets (throttled counts) and usage "
             "per minute", tables=("neuron_tasks.tenants", "neuron_tasks.tenant_buckets", "neuron_tasks.tenant_usage")),
        Page("topics", "Topics", "cluster-wide concurrency, retries, delay and priority per topic; the slots in use",
             tables=("neuron_tasks.topics", "neuron_tasks.topic_slots")),
    ),
    tables=("neuron_tasks.messages", "neuron_tasks.messages_history", "neuron_tasks.workers", "neuron_tasks.tenants",
            "neuron_tasks.tenant_buckets", "neuron_tasks.tenant_usage", "neuron_tasks.topics",
            "neuron_tasks.topic_slots", "neuron_tasks.results"),
)
