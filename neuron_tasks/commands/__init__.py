"""Command groups of `neuron-tasks`, one module per feature.

A module here that defines `NAME: str` and `app: typer.Typer` is added to the CLI as
`neuron-tasks NAME ...`. Keep imports of heavy libraries (torch, hnswlib) inside the commands.
A module may also define `demo_phase(url, settings, console) -> bool` and `DEMO_ORDER: int`;
`neuron-tasks demo` runs those phases in order after the queue demo.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def modules() -> list[ModuleType]:
    found = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
    return sorted(found, key=lambda m: (getattr(m, "DEMO_ORDER", 100), m.__name__))
