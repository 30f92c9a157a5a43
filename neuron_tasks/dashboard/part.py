"""The dashboard's Part: its settings, its command and its place in the demo."""

from __future__ import annotations

from neuron_tasks.core.parts import Command, Demo, Part

PART = Part(
    name="dashboard",
    title="Dashboard",
    order=90,
    settings=("neuron_tasks.dashboard.settings:DashboardSettings",),
    commands=(Command("dashboard", "neuron_tasks.dashboard.commands:app"),),
    demos=(Demo("dashboard", "neuron_tasks.dashboard.commands:demo_phase", order=900),),
)
