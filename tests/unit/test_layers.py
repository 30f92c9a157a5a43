"""The package's import layers, read from the source (AST, every import of every module of
neuron_tasks, those inside functions included, and importlib.import_module("...") with a literal).

    base (config, db, embedded, errors, sql, pgarray)      imports only the base
    core                                                   no feature, no dashboard/cli/scheduler/demo/
                                                           worker/testing/commandline
    commandline                                            base and core (every command group uses it)
    llm                                                    base, core, commandline, testing
    vectors                                                those and llm
    pipelines                                              those and vectors
    dashboard, scheduler, worker                           no feature, no cli, no demo
    testing                                                no feature, no cli, no demo, no dashboard, no worker
    anything but the cli                                   never the cli
    anything but the old paths themselves                  never an old (deprecated) import path

The old paths (neuron_tasks.actors.*, boot, and every module that aliases itself through
neuron_tasks._moved: broker, results, tenancy, ...) point at their new homes and are exempt from the
feature rules; so is the
package's own __init__ (it re-exports the broker and, on first use, `periodic`). Imports under
`if TYPE_CHECKING:` count: a type-only dependency is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import neuron_tasks

PACKAGE = Path(neuron_tasks.__file__).resolve().parent
TOP = "neuron_tasks"

BASE = frozenset({"config", "db", "embedded", "errors", "sql", "pgarray"})
FEATURES = frozenset({"llm", "vectors", "pipelines"})
OLD_PATHS = frozenset({"actors", "broker", "boot", "demo_actors", "pytest_plugin", "results", "tenancy", "_moved"})

# layer -> the only layers it may import ("root": the package itself, neuron_tasks/__init__.py)
ALLOWED: dict[str, frozenset[str]] = {
    "base": frozenset({"base"}),
    "commandline": frozenset({"base", "core", "commandline"}),
    "llm": frozenset({"base", "core", "commandline", "testing", "llm", "root"}),
    "vectors": frozenset({"base", "core", "commandline", "testing", "llm", "vectors", "root"}),
    "pipelines": frozenset({"base", "core", "commandline", "testing", "llm", "vectors", "pipelines", "root"}),
}
# layer -> layers it must not import (anything else is fine)
FORBIDDEN: dict[str, frozenset[str]] = {
    "core": FEATURES | {"dashboard", "cli", "scheduler", "demo", "worker", "testing", "commandline"},
    "dashboard": FEATURES | {"cli", "demo"},
    "scheduler": FEATURES | {"cli", "demo"},
    "worker": FEATURES | {"cli", "demo"},
    "testing": FEATURES | {"cli", "demo", "dashboard", "worker"},
}


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository
    line: int
    module: str  # the neuron_tasks module imported


def layer_of_module(module: str, shims: frozenset[str] = frozenset()) -> str:
    """The layer of a dotted neuron_tasks module name ("root" for the package itself, "old" for
    an old path: one of OLD_PATHS or a module among `shims`)."""
    parts = module.split(".")
    if parts[0] != TOP:
        raise ValueError(module)
    if len(parts) == 1 or parts[1] == "__init__":
        return "root"
    first = parts[1]
    if first in OLD_PATHS or module in shims:
        return "old"
    if first in BASE:
        return "base"
    return first


def module_of_file(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    names = list(rel.parts)
    if names[-1] == "__init__":
        names.pop()
    return ".".join(names)


def _is_submodule(dotted: str, root: Path) -> bool:
    rel = Path(*dotted.split(".")[1:])
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def imports_of(path: Path, root: Path = PACKAGE) -> Iterator[Import]:
    """Every neuron_tasks module imported by the file at `path` (in the package at `root`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_of_file(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    rel = str(path.relative_to(root.parent))
    for node in ast.walk(tree):
        found: list[str] = []
        if isinstance(node, ast.Import):
            found = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            # `from pkg import name`: name is a submodule when such a file exists, else an attribute.
            found = [f"{base}.{a.name}" if _is_submodule(f"{base}.{a.name}", root) else base
                     for a in node.names] if base.split(".")[0] == TOP else [base]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "import_module"))):
            found = [node.args[0].value]
        for module in found:
            if module == TOP or module.startswith(TOP + "."):
                yield Import(rel, getattr(node, "lineno", 0), module)


def source_files(root: Path = PACKAGE) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def shims(root: Path = PACKAGE) -> frozenset[str]:
    """Modules that keep an old path working: those that import neuron_tasks._moved."""
    return frozenset(module_of_file(p, root) for p in source_files(root)
                     if any(i.module == f"{TOP}._moved" for i in imports_of(p, root)))


def file_layer(path: Path, root: Path = PACKAGE, old: frozenset[str] = frozenset()) -> str:
    return layer_of_module(module_of_file(path, root), old)


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import that breaks a rule, as "file:line: imports X (rule)"."""
    old = shims(root)
    out: list[str] = []
    for path in source_files(root):
        layer = file_layer(path, root, old)
        for imp in imports_of(path, root):
            target = layer_of_module(imp.module, old)
            where = f"{imp.file}:{imp.line}: imports {imp.module}"
            if target == layer:
                continue
            if target == "cli" and layer != "cli":
                out.append(f"{where} (only neuron_tasks.cli imports the CLI)")
                continue
            if target == "old" and layer != "old":
                out.append(f"{where} (an old import path: use the new one)")
                continue
            if layer in ("old", "root"):
                continue
            if layer in ALLOWED and target not in ALLOWED[layer]:
                out.append(f"{where} ({layer} imports only {', '.join(sorted(ALLOWED[layer] - {layer}))})")
            elif target in FORBIDDEN.get(layer, ()):
                out.append(f"{where} ({layer} must not import {target})")
    return out


def test_import_layers() -> None:
    found = violations()
    for line in found:
        print(line)
    assert not found, f"{len(found)} imports break the layers:\n" + "\n".join(found)


def test_layer_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The reader itself: relative, from-package, in-function and import_module imports are seen."""
    seen = {i.module for i in imports_of(PACKAGE / "core" / "part.py")}
    assert "neuron_tasks.core.parts" in seen
    seen = {i.module for i in imports_of(PACKAGE / "core" / "parts.py")}
    assert "neuron_tasks.core.part" in seen, "relative import inside a function"
    seen = {i.module for i in imports_of(PACKAGE / "db.py")}
    assert "neuron_tasks.embedded" in seen, "`from neuron_tasks import embedded` is the module"
    assert layer_of_module("neuron_tasks.actors.llm") == "old"
    assert layer_of_module("neuron_tasks.sql") == "base"
    assert layer_of_module("neuron_tasks") == "root"


FAKE = {
    "__init__.py": "from neuron_tasks.core.broker import Broker\n",
    "config.py": "import os\n",
    "errors.py": "from neuron_tasks.core import broker\n",
    "core/__init__.py": "",
    "core/broker.py": "from neuron_tasks import config, errors\n\ndef f():\n    import neuron_tasks.llm.actors\n",
    "core/admin.py": "from ..dashboard import app\nfrom . import broker\n",
    "llm/__init__.py": "",
    "llm/actors.py": "from neuron_tasks.core import broker\nfrom neuron_tasks.testing import fake\n",
    "llm/bad.py": "import neuron_tasks.vectors.store\n",
    "vectors/__init__.py": "",
    "vectors/store.py": "from neuron_tasks.llm import actors\n",
    "testing/__init__.py": "",
    "testing/fake.py": "",
    "dashboard/__init__.py": "",
    "dashboard/app.py": "from neuron_tasks.cli import app\n",
    "scheduler/__init__.py": "",
    "scheduler/jobs.py": "import importlib\nimportlib.import_module('neuron_tasks.pipelines.actors')\n",
    "pipelines/__init__.py": "",
    "pipelines/actors.py": "from neuron_tasks.vectors import store\nfrom neuron_tasks.actors import llm\n",
    "cli/__init__.py": "",
    "cli/app.py": "from neuron_tasks.llm import actors\n",
    "actors/__init__.py": "",
    "actors/llm.py": "from neuron_tasks.llm import actors\n",
    "_moved.py": "",
    "llm/old.py": "from neuron_tasks._moved import alias\n\nalias(__name__, 'neuron_tasks.testing.fake')\n",
    "vectors/user.py": "from neuron_tasks.llm import old\n",
}


def test_layer_checker_on_a_made_up_package(tmp_path: Path) -> None:
    root = tmp_path / "neuron_tasks"
    for name, text in FAKE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    found = {line.split(" (")[0] for line in violations(root)}
    assert found == {
        "neuron_tasks/errors.py:1: imports neuron_tasks.core.broker",
        "neuron_tasks/core/broker.py:4: imports neuron_tasks.llm.actors",
        "neuron_tasks/core/admin.py:1: imports neuron_tasks.dashboard.app",
        "neuron_tasks/llm/bad.py:1: imports neuron_tasks.vectors.store",
        "neuron_tasks/dashboard/app.py:1: imports neuron_tasks.cli.app",
        "neuron_tasks/scheduler/jobs.py:2: imports neuron_tasks.pipelines.actors",
        "neuron_tasks/pipelines/actors.py:2: imports neuron_tasks.actors.llm",
        "neuron_tasks/vectors/user.py:1: imports neuron_tasks.llm.old",
    }


def test_every_file_has_a_layer() -> None:
    known = BASE | FEATURES | OLD_PATHS | {"core", "commandline", "dashboard", "scheduler", "worker", "cli",
                                           "demo", "testing"}
    old = shims()
    unknown = [str(p.relative_to(PACKAGE)) for p in source_files()
               if file_layer(p, PACKAGE, old) not in {*known, "base", "old", "root"}]
    assert not unknown, f"files outside every layer (add them to tests/unit/test_layers.py): {unknown}"


def test_feature_parts_declare_the_layers_below_them() -> None:
    """Each feature's Part.below names exactly the features it may import."""
    from neuron_tasks.core.parts import parts

    below = {p.name: set(p.below) for p in parts() if p.name in FEATURES}
    assert below.keys() == FEATURES
    for name, allowed in ALLOWED.items():
        if name in FEATURES:
            assert below[name] == (allowed & FEATURES) - {name}, name


def test_nothing_imports_a_top_level_scheduler() -> None:
    """The scheduler is neuron_tasks.scheduler: `scheduler` is left to applications."""
    found = []
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: imports {n}"
                      for n in names if n.split(".")[0] == "scheduler"]
    assert not found, found
