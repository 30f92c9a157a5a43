"""Old import paths keep working for one release, with a DeprecationWarning, as the same module
objects; and the names of the built-in actors (stored in every queued message) did not change.

Each check runs in a fresh interpreter: importing an actor module binds its actors to whatever
broker is global, and a module already imported does not warn again.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import neuron_tasks
from tests.conftest import ROOT

PACKAGE = Path(neuron_tasks.__file__).resolve().parent

PRELUDE = """
import importlib, json, sys, warnings
import dramatiq
from neuron_tasks import PostgresBroker

# Never connected: PostgresBroker opens its pool on first use.
broker = PostgresBroker("postgresql://nobody@127.0.0.1:1/never")
dramatiq.set_broker(broker)


def moved(old, new):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    return {
        "same": module is importlib.import_module(new) and sys.modules[old] is sys.modules[new],
        "warnings": [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)],
    }
"""

# old path -> new home, at least these (every module that calls neuron_tasks._moved.alias is checked)
MOVED_AT_LEAST = {
    "neuron_tasks.actors.llm": "neuron_tasks.llm.actors",
    "neuron_tasks.actors.vectors": "neuron_tasks.vectors.actors",
    "neuron_tasks.actors.tuner": "neuron_tasks.vectors.tuner_actors",
    "neuron_tasks.actors.defrag": "neuron_tasks.vectors.defrag_actors",
    "neuron_tasks.actors.pipelines": "neuron_tasks.pipelines.actors",
    "neuron_tasks.broker": "neuron_tasks.core.broker",
    "neuron_tasks.results": "neuron_tasks.core.results",
    "neuron_tasks.tenancy": "neuron_tasks.core.tenancy",
    "neuron_tasks.demo_actors": "neuron_tasks.demo.actors",
    "neuron_tasks.pytest_plugin": "neuron_tasks.testing.pytest_plugin",
}


def aliases() -> dict[str, str]:
    """Every `alias(__name__, "new.home")` in the package, by the module that makes it."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "alias"
                    and len(node.args) == 2 and isinstance(node.args[1], ast.Constant)):
                rel = path.relative_to(PACKAGE.parent).with_suffix("").parts
                module = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
                found[module] = str(node.args[1].value)
    return found


MOVED = aliases()


def test_the_old_paths_are_all_still_there() -> None:
    missing = {old: new for old, new in MOVED_AT_LEAST.items() if MOVED.get(old) != new}
    assert not missing, f"old import paths gone or pointing elsewhere: {missing}"


# The actors every worker declares, with their queues, as messages already in the queue name them.
BUILT_IN_ACTORS = {
    "cache_refresh": "llm",
    "http_call": "tasks",
    "llm_cache_rotate": "llm",
    "llm_complete": "llm",
    "llm_embed": "llm",
    "llm_rerank": "llm",
    "sql_task": "tasks",
    "neuron_tasks.defrag_indexes": "maintenance",
    "neuron_tasks.embed_and_index": "vectors",
    "neuron_tasks.index_vectors": "vectors",
    "neuron_tasks.pipeline_sync": "pipelines",
    "neuron_tasks.pipeline_tick": "pipelines",
    "neuron_tasks.tune_vector_indexes": "maintenance",
}


def run(body: str) -> Any:
    """Run PRELUDE + body in a fresh interpreter; its last stdout line is JSON."""
    code = PRELUDE + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_old_path_warns_and_is_the_new_module(old: str, new: str) -> None:
    got = run(f"print(json.dumps(moved({old!r}, {new!r})))")
    assert got["same"], f"{old} is not the module {new}"
    assert any(old in w and new in w for w in got["warnings"]), f"no DeprecationWarning naming both: {got}"


def test_boot_still_exposes_the_broker() -> None:
    got = run("""
        import neuron_tasks.boot as boot
        from neuron_tasks.core.broker import PostgresBroker as Pg
        print(json.dumps({"pg": isinstance(boot.broker, Pg), "global": dramatiq.get_broker() is boot.broker}))
    """)
    assert got == {"pg": True, "global": True}


def test_built_in_actor_names_and_queues_do_not_change() -> None:
    got = run("""
        from neuron_tasks.core import parts
        for module in parts.actor_modules():
            importlib.import_module(module)
        ticks = [t.actor for p in parts.parts() for t in p.ticks if t.actor]
        print(json.dumps({"actors": {n: broker.get_actor(n).queue_name for n in broker.get_declared_actors()},
                          "ticks": ticks}))
    """)
    declared = got["actors"]
    missing = {n: q for n, q in BUILT_IN_ACTORS.items() if declared.get(n) != q}
    assert not missing, f"built-in actors renamed or moved to another queue: {missing}; declared: {declared}"
    assert set(got["ticks"]) <= set(declared), "every tick's actor is declared by the parts' actor modules"
