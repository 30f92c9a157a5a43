"""The queue's own Part: its settings, maintenance and dashboard pages (see parts.py)."""

from __future__ import annotations

from neuron_tasks.core.parts import Action, Page, Part, Retention, Tick

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
        Page("tenants", "Tenants", "each tenant's limits beside what it uses now: its rate against its QPS limit, "
             "tokens against its budgets, and how often it was throttled",
             tables=("neuron_tasks.tenants", "neuron_tasks.tenant_buckets", "neuron_tasks.tenant_usage"),
             data="neuron_tasks.core.page:tenants", template="neuron_tasks.core:tenants.html", live=True,
             show_tables=False),
        Page("topics", "Topics", "each topic's slots in use against its concurrency, and the messages waiting for one",
             tables=("neuron_tasks.topics", "neuron_tasks.topic_slots"),
             data="neuron_tasks.core.page:topics", template="neuron_tasks.core:topics.html", live=True,
             show_tables=False),
        Page("queue-admin", "Cancel and purge", "cancel messages by id; purge a queue's waiting messages",
             tables=("neuron_tasks.messages",), data="neuron_tasks.core.queue_page:load",
             template="neuron_tasks.core:queue_admin.html", show_tables=False,
             actions=(Action("cancel", "neuron_tasks.core.queue_page:cancel_action"),
                      Action("purge", "neuron_tasks.core.queue_page:purge_action"))),
    ),
    tables=("neuron_tasks.messages", "neuron_tasks.messages_history", "neuron_tasks.workers", "neuron_tasks.tenants",
            "neuron_tasks.tenant_buckets", "neuron_tasks.tenant_usage", "neuron_tasks.topics",
            "neuron_tasks.topic_slots", "neuron_tasks.results", "neuron_tasks.tenant_throttles"),
)
