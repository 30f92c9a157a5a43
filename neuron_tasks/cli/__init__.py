"""`neuron-tasks`, the command line: the queue's own commands here, each part's group from its Part.

Nothing in the library imports this package, and importing it loads no command: finding the
parts imports every subpackage of neuron_tasks, this one included, so the app (and every part's
command group with it) loads only when `main` runs or `app` is asked for."""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["app", "main"]


def main() -> None:
    from neuron_tasks.cli.app import main as run

    run()


def __getattr__(name: str) -> Any:
    if name == "app":
        from neuron_tasks.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """`neuron_tasks.cli.app` is the Typer app, as when the command line was one module: importing
    the submodule of that name binds the submodule here, so its app is bound instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "app" and isinstance(value, types.ModuleType):
            value = value.app
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
