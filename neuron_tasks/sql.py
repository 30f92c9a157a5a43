"""Named SQL statements, loaded once from queries.sql (`-- name: x` headers)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_HEADER = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    text = (Path(__file__).parent / "queries.sql").read_text()
    parts = _HEADER.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.startswith("--")]
        found[name] = "\n".join(lines).strip().rstrip(";")
    return found


def q(name: str) -> str:
    """The statement called `name`; KeyError names the missing query."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in queries.sql") from None
