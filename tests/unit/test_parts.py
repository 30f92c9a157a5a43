"""The Part registry (neuron_tasks.core.parts): what each part declares can be found and used.

Every "module:attribute" a part names (settings, actor modules, retention, ticks, commands,
pages, demos, close) imports; a reference whose optional extra is not installed is skipped.
"""

from __future__ import annotations

import importlib.resources
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from neuron_tasks.core import parts as registry
from neuron_tasks.core import runtime
from neuron_tasks.core.parts import Part, parts
from tests.conftest import ROOT


def references(part: Part) -> Iterator[tuple[str, str]]:
    """(what, "module:attribute") for every reference a part makes to code."""
    for ref in part.settings:
        yield "settings", ref
    for module in part.actors:
        yield "actors", module
    for r in part.retention:
        yield f"retention {r.table}", r.run
    for tick in part.ticks:
        if tick.run is not None:
            yield f"tick {tick.name}", tick.run
    for command in part.commands:
        yield f"command {command.name}", command.app
    for page in part.pages:
        if page.data:
            yield f"page {page.slug} data", page.data
        if page.metrics:
            yield f"page {page.slug} metrics", page.metrics
        for action in page.actions:
            yield f"page {page.slug} action {action.name}", action.run
    for demo in part.demos:
        yield f"demo {demo.name}", demo.run
    if part.close:
        yield "close", part.close


ALL_REFERENCES = [(part.name, what, ref) for part in parts() for what, ref in references(part)]


def test_queue_part_comes_first_and_names_are_unique() -> None:
    names = [p.name for p in parts()]
    assert names[0] == "queue"
    assert len(names) == len(set(names)), f"part names repeat: {names}"
    assert {"queue", "llm", "vectors", "pipelines", "scheduler", "dashboard"} <= set(names)
    assert [p.order for p in parts()] == sorted(p.order for p in parts())


# Actor modules bind their actors to Dramatiq's global broker when imported: every reference is
# loaded in a child process, on a PostgresBroker that never connects, not in this one.
LOADER = """
import json, sys
import dramatiq
import typer
from neuron_tasks import PostgresBroker
from neuron_tasks.core import parts

dramatiq.set_broker(PostgresBroker("postgresql://nobody@127.0.0.1:1/never"))
out = {}
for ref in json.loads(sys.stdin.read()):
    try:
        obj = parts.load(ref)
    except ModuleNotFoundError as exc:
        out[ref] = {"missing": exc.name or str(exc)}
    except Exception as exc:
        out[ref] = {"error": f"{type(exc).__name__}: {exc}"}
    else:
        out[ref] = {"class": isinstance(obj, type), "callable": callable(obj), "none": obj is None,
                    "typer": isinstance(obj, typer.Typer)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def loaded() -> dict[str, dict[str, Any]]:
    refs = sorted({ref for _, _, ref in ALL_REFERENCES})
    done = subprocess.run([sys.executable, "-c", LOADER], input=json.dumps(refs), capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("part", "what", "ref"), ALL_REFERENCES, ids=[f"{p}:{w}" for p, w, _ in ALL_REFERENCES])
def test_every_reference_imports(loaded: dict[str, dict[str, Any]], part: str, what: str, ref: str) -> None:
    got = loaded[ref]
    if "missing" in got:
        missing = got["missing"]
        assert missing.split(".")[0] != "neuron_tasks", f"{part} {what}: {ref} names a module that is not there"
        pytest.skip(f"{part} {what}: optional dependency {missing} is not installed")
    assert "error" not in got, f"{part} {what}: {ref} fails to import: {got.get('error')}"
    if ":" in ref:  # a module listed in `actors` is a module; everything else is called or read
        assert not got["none"], f"{part} {what}: {ref} is None"
        if what == "settings":
            assert got["class"], f"{ref} is not a settings class"
        elif what.startswith("command"):
            assert got["typer"], f"{part} {what}: {ref} is not a typer.Typer"
        else:
            assert got["callable"], f"{part} {what}: {ref} is not callable"


def test_page_templates_exist() -> None:
    for part in parts():
        for page in part.pages:
            if page.template is None:
                continue
            package, _, name = page.template.partition(":")
            assert importlib.resources.files(package).joinpath(name).is_file(), f"{part.name}: {page.template}"


def test_page_slugs_are_unique() -> None:
    slugs = Counter(page.slug for part in parts() for page in part.pages)
    repeated = [slug for slug, n in slugs.items() if n > 1]
    assert not repeated, f"page slugs used twice: {repeated}"
    assert set(registry.pages()) == set(slugs)


def test_tick_names_are_unique_and_every_setting_exists() -> None:
    defs = runtime.definitions()
    ticks = [tick for part in parts() for tick in part.ticks]
    names = Counter(t.name for t in ticks)
    assert not [n for n, c in names.items() if c > 1], f"tick names used twice: {names}"
    for tick in ticks:
        if isinstance(tick.every, str):
            assert tick.every in defs, f"tick {tick.name}: no part declares the setting {tick.every!r}"
        else:
            assert tick.every > 0, tick.name
        if tick.actor_setting is not None:
            assert tick.actor_setting in defs, f"tick {tick.name}: no setting {tick.actor_setting!r}"


def test_restart_only_settings_are_not_live() -> None:
    defs = runtime.definitions()
    classes = runtime.settings_classes()
    assert classes, "no settings class found"
    checked = 0
    for cls in classes:
        for key, field in cls.model_fields.items():
            if runtime.restart_required(field):
                checked += 1
                assert not defs[key].live, f"{cls.__name__}.{key} is restart-only but listed as live"
    assert checked, "no restart-only setting found"


def test_every_part_table_is_schema_qualified_and_declared_once_per_part() -> None:
    for part in parts():
        assert len(part.tables) == len(set(part.tables)), part.name
        for table in (*part.tables, *(r.table for r in part.retention)):
            assert table.startswith("neuron_tasks.") and table.count(".") == 1, f"{part.name}: {table}"
    owners = Counter(t for part in parts() for t in part.tables)
    assert not [t for t, n in owners.items() if n > 1], f"tables claimed by two parts: {owners}"
