"""The Part registry: each feature declares itself once, in its own `part.py`, as a `Part`.

    PART = Part(
        name="llm", title="LLM jobs",
        settings=("neuron_tasks.llm.settings:LlmSettings",),
        actors=("neuron_tasks.llm.actors",),
        retention=(Retention("llm_usage", "neuron_tasks.llm.maintenance:trim_usage"),),
        ticks=(Tick("neuron_tasks.cache_rotation", "scheduler_cache_rotation_every_s", actor="llm_cache_rotate",
                    queue="llm", requires="neuron_tasks.llm_cache"),),
        commands=(Command("llm", "neuron_tasks.llm.commands:app"),),
        pages=(Page("llm-cache", "LLM cache", "...", tables=("neuron_tasks.llm_cache",)),),
        demos=(Demo("llm", "neuron_tasks.llm.commands:demo_phase", order=300),),
    )

Settings discovery, the scheduler's built-in jobs and retention, the CLI's command groups, the
dashboard's pages and /metrics, the worker's actor modules and the demo all read `parts()`:
none of them names a feature. Everything is written as "module:attribute" text and imported only
by whoever uses it, so reading the registry imports no feature code (a worker does not import the
dashboard to learn its settings).

Parts are found as the `part.py` module of every direct subpackage of neuron_tasks (this package's
own `queue` part first), then the `neuron_tasks.parts` entry-point group for parts shipped outside.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)


class PageSource(Protocol):
    """What a part's page and metrics functions read through (the dashboard passes its own)."""

    pool: ConnectionPool
    count_cap: int  # counts stop here and fall back to the planner's estimate

    def exists(self, table: str) -> bool: ...


@dataclass(frozen=True)
class Retention:
    """One growing table trimmed by the scheduler's leader: `run(conn) -> rows deleted`."""

    table: str
    run: str


@dataclass(frozen=True)
class Tick:
    """A periodic job of a part, fired by the scheduler's leader exactly once per tick.

    Either `run` ("module:function", called as run(conn) -> note, in the fire's transaction: for
    statements that must work with no worker alive) or `actor` (enqueued on `queue` for workers).
    `every` is seconds, or the name of the setting that holds them."""

    name: str
    every: str | float
    run: str | None = None
    actor: str | None = None
    queue: str = "default"
    requires: str | None = None  # a table that must exist, else the tick is recorded as skipped
    skip_unless: str | None = None  # a named query returning one boolean: false records the tick as skipped
    actor_setting: str | None = None  # a setting that, when set, names the actor instead

    def __post_init__(self) -> None:
        if (self.run is None) == (self.actor is None):
            raise ValueError(f"tick {self.name!r}: give exactly one of run= or actor=")


@dataclass(frozen=True)
class Command:
    """A `neuron-tasks NAME ...` command group: `app` is "module:attribute" of a typer.Typer."""

    name: str
    app: str


@dataclass(frozen=True)
class Action:
    """A button of a page: POST /parts/<page>/<name> calls `run(pool, form) -> notice or None`
    (None: nothing matched, answered 404)."""

    name: str
    run: str


@dataclass(frozen=True)
class Page:
    """A dashboard page. `tables` are shown (paged) when they exist; `data` ("module:function",
    called as data(source) with the dashboard's read helpers) returns extra context: `charts` (a list
    of {title, unit, labels, series: [(name, values)]}) and anything `template` renders; `template`
    is "package:file.html" inside the part's folder; `metrics` ("module:function", metrics(source))
    yields Prometheus metric families for /metrics."""

    slug: str
    title: str
    about: str
    tables: tuple[str, ...] = ()
    data: str | None = None
    template: str | None = None
    actions: tuple[Action, ...] = ()
    metrics: str | None = None
    live: bool = False  # the page refreshes itself
    show_tables: bool = True  # False: the raw tables are linked, not listed, when `data` answers


@dataclass(frozen=True)
class Demo:
    """A phase of `neuron-tasks demo`: run(url, settings, console) -> ok, in `order`."""

    name: str
    run: str
    order: int = 100


@dataclass(frozen=True)
class Part:
    """What one feature brings. Only `name` is required."""

    name: str
    title: str = ""
    order: int = 100  # where the part's pages, settings and commands are listed
    settings: tuple[str, ...] = ()  # pydantic settings classes, "module:Class"
    actors: tuple[str, ...] = ()  # modules whose actors every worker loads
    retention: tuple[Retention, ...] = ()
    ticks: tuple[Tick, ...] = ()
    commands: tuple[Command, ...] = ()
    pages: tuple[Page, ...] = ()
    tables: tuple[str, ...] = ()  # every table of the part (test kits empty them between tests)
    demos: tuple[Demo, ...] = ()
    close: str | None = None  # "module:function"(): releases what the part bound in this process
    below: tuple[str, ...] = field(default=())  # parts this one may import (llm below vectors, ...)


def load(ref: str) -> Any:
    """The object named by "module:attribute"."""
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for name in filter(None, attr.split(".")):
        obj = getattr(obj, name)
    return obj


def loader(ref: str) -> Callable[..., Any]:
    fn = load(ref)
    if not callable(fn):
        raise TypeError(f"{ref} is not callable")
    return fn


@cache
def parts() -> tuple[Part, ...]:
    """Every part installed, in their `order` (the queue's own first), then by name."""
    import neuron_tasks

    from .part import PART as QUEUE

    found: dict[str, Part] = {QUEUE.name: QUEUE}
    for info in sorted(pkgutil.iter_modules(neuron_tasks.__path__), key=lambda m: m.name):
        # Looked for on disk first, so that discovery runs no package's __init__ without a part.
        if info.ispkg and info.name != "core" and any((Path(d) / info.name / "part.py").is_file()
                                                      for d in neuron_tasks.__path__):
            _add(found, importlib.import_module(f"neuron_tasks.{info.name}.part").PART)
    for ep in metadata.entry_points(group="neuron_tasks.parts"):
        try:
            _add(found, ep.load())
        except Exception:
            log.exception("part %s (entry point %s) could not be loaded; it is left out", ep.name, ep.value)
    return tuple(sorted(found.values(), key=lambda p: (p.order, p.name)))


def _add(found: dict[str, Part], part: Any) -> None:
    if not isinstance(part, Part):
        raise TypeError(f"{part!r} is not a neuron_tasks Part")
    if part.name in found:
        raise ValueError(f"two parts are named {part.name!r}")
    found[part.name] = part


def settings_classes() -> list[type[Any]]:
    """The settings classes of every part; a part whose extra is not installed is skipped."""
    out: list[type[Any]] = []
    for part in parts():
        for ref in part.settings:
            try:
                out.append(load(ref))
            except ImportError as exc:
                log.debug("settings %s skipped: %s", ref, exc)
    return out


def actor_modules() -> list[str]:
    return [m for part in parts() for m in part.actors]


def pages() -> dict[str, tuple[Part, Page]]:
    return {page.slug: (part, page) for part in parts() for page in part.pages}


def demos() -> list[Demo]:
    return sorted((d for part in parts() for d in part.demos), key=lambda d: (d.order, d.name))


def close_all() -> None:
    """Release every part's per-process resources (a worker calls this as it stops)."""
    for part in parts():
        if part.close is None:
            continue
        try:
            loader(part.close)()
        except ImportError:
            continue
        except Exception:
            log.exception("closing part %s failed", part.name)
