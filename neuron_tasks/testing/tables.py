"""Emptying the tables of a test database between tests, by part (see neuron_tasks.core.parts).

    from neuron_tasks.testing import truncate

    truncate(url, "queue", "llm")   # the tables the queue and LLM parts declare
    truncate(url)                   # every installed part's tables
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from neuron_tasks.core.parts import parts


def part_tables(*part_names: str) -> list[str]:
    """The tables (schema-qualified) that the named parts declare in `Part.tables`, in order and
    once each; every installed part's when no name is given. An unknown part name is a ValueError."""
    known = {p.name: p for p in parts()}
    unknown = [n for n in part_names if n not in known]
    if unknown:
        raise ValueError(f"no part named {', '.join(map(repr, unknown))} (parts: {', '.join(known)})")
    chosen = [known[n] for n in part_names] if part_names else list(known.values())
    return list(dict.fromkeys(t for p in chosen for t in p.tables))


def truncate(target: str | psycopg.Connection[Any], *part_names: str) -> list[str]:
    """TRUNCATE ... RESTART IDENTITY CASCADE the tables of the named parts (all parts when none
    is named) in one statement; tables not in this database (a migration not applied) are
    skipped. `target` is a database URL or an open connection. Returns the tables emptied."""
    wanted = part_tables(*part_names)
    if isinstance(target, psycopg.Connection):
        return _truncate(target, wanted)
    with psycopg.connect(target, autocommit=True) as conn:
        return _truncate(conn, wanted)


def _truncate(conn: psycopg.Connection[Any], wanted: list[str]) -> list[str]:
    present = [name for name, found in conn.execute(
        "SELECT t, to_regclass(t) IS NOT NULL FROM unnest(%s::text[]) AS t", (wanted,)).fetchall() if found]
    if present:
        names = sql.SQL(", ").join(sql.Identifier(*name.split(".", 1)) for name in present)
        conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(names))
    return present
