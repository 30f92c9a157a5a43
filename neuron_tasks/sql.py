"""Named SQL statements, loaded once from neuron_tasks/queries/*.sql (`-- name: x` headers).

Each feature keeps its statements in its own file there; names are unique across files.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_HEADER = re.compile(r"^-- name: ([a-z0-9_]+)\s*$", re.MULTILINE)
QUERY_DIR = Path(__file__).parent / "queries"


@cache
def queries() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(QUERY_DIR.glob("*.sql")):
        parts = _HEADER.split(path.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise ValueError(f"query {name!r} is defined twice (second time in {path.name})")
            lines = [ln for ln in body.strip().splitlines() if not ln.startswith("--")]
            found[name] = "\n".join(lines).strip().rstrip(";")
    return found


def q(name: str) -> str:
    """The statement called `name`; KeyError names the missing query."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in {QUERY_DIR}") from None
