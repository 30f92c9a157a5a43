"""Named SQL statements, loaded once from every `queries/*.sql` file of the package.

Each part keeps its statements in its own folder (core/queries, llm/queries, ...) under
`-- name: x` headers; names are unique across the package.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_HEADER = re.compile(r"^-- name: ([a-z0-9_]+)\s*$", re.MULTILINE)
PACKAGE_DIR = Path(__file__).parent


@cache
def queries() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(PACKAGE_DIR.glob("**/queries/*.sql")):
        parts = _HEADER.split(path.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise ValueError(f"query {name!r} is defined twice (second time in {path.relative_to(PACKAGE_DIR)})")
            lines = [ln for ln in body.strip().splitlines() if not ln.startswith("--")]
            found[name] = "\n".join(lines).strip().rstrip(";")
    return found


def q(name: str) -> str:
    """The statement called `name`; KeyError names the missing query."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in {PACKAGE_DIR}/**/queries") from None
