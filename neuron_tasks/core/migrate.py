"""Versioned migrations from schema/NNN_name.sql, applied in one transaction under a lock.

Two processes upgrading at once are serialised by a transaction-level advisory lock:
the second waits, then finds nothing left to apply.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import class_row, scalar_row

from neuron_tasks.errors import MigrationError
from neuron_tasks.sql import q

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key: the bytes "neuron_t" as a bigint.
MIGRATION_LOCK_KEY = int.from_bytes(b"neuron_t", "big") & 0x7FFF_FFFF_FFFF_FFFF
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str = field(repr=False)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def schema_dir() -> Path:
    """schema/ inside an installed wheel, else the repository's schema/."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "_schema"
    if packaged.is_dir():
        return packaged
    return package.parent / "schema"


def load_migrations(folder: Path | None = None) -> list[Migration]:
    folder = folder or schema_dir()
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files are named NNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number in {folder}")
    return found


@dataclass(frozen=True, slots=True)
class Applied:
    """A row of neuron_tasks.schema_migrations."""

    version: int
    checksum: str


def _exists(conn: psycopg.Connection[Any], query: str) -> bool:
    with conn.cursor(row_factory=scalar_row) as cur:
        return bool(cur.execute(q(query)).fetchone())


def applied_versions(conn: psycopg.Connection[Any]) -> dict[int, str]:
    """{version: checksum} of the migrations applied to this database."""
    if not _exists(conn, "migrations_table_exists"):
        return {}
    with conn.cursor(row_factory=class_row(Applied)) as cur:
        return {a.version: a.checksum for a in cur.execute(q("applied_migrations"))}


def pending(url: str, *, connect_timeout: int = 10) -> list[Migration]:
    with psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout) as conn:
        done = applied_versions(conn)
    return [m for m in load_migrations() if m.version not in done]


def outdated(waiting: list[Migration]) -> str | None:
    """What to tell someone whose database lacks `waiting` migrations (None: it is up to date)."""
    if not waiting:
        return None
    if len(waiting) == len(load_migrations()):
        return "this database has no neuron_tasks schema yet: run `neuron-tasks db upgrade` to create it"
    names = ", ".join(f"{m.version:03d}_{m.name}" for m in waiting)
    return (f"the database schema is older than this neuron_tasks ({len(waiting)} migration(s) to apply: {names}): "
            "run `neuron-tasks db upgrade`")


def require_current(url: str) -> None:
    """Raise MigrationError, saying to run `neuron-tasks db upgrade`, unless every migration is applied.
    Reads only: never creates or changes anything."""
    problem = outdated(pending(url))
    if problem:
        raise MigrationError(problem)


def upgrade(url: str) -> list[Migration]:
    """Apply every pending migration; returns the ones this call applied."""
    migrations = load_migrations()
    applied: list[Migration] = []
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute(q("migration_lock"), {"key": MIGRATION_LOCK_KEY})
        conn.execute(q("create_schema"))
        conn.execute(q("create_migrations_table"))
        done = applied_versions(conn)
        for m in migrations:
            if m.version in done:
                if done[m.version] != m.checksum:
                    log.warning("migration %03d_%s changed after it was applied", m.version, m.name)
                continue
            log.info("applying migration %03d_%s", m.version, m.name)
            try:
                conn.execute(m.sql.encode())
            except psycopg.Error as exc:
                raise MigrationError(f"migration {m.version:03d}_{m.name} failed: {exc}") from exc
            conn.execute(q("record_migration"), {"version": m.version, "name": m.name, "checksum": m.checksum})
            applied.append(m)
        if _exists(conn, "setting_defs_exist"):
            from neuron_tasks.core.runtime import sync_defs

            sync_defs(conn)  # setting definitions follow the installed code
    return applied
