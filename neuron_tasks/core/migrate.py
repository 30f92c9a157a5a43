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

import psycopg

from neuron_tasks.errors import MigrationError

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


def applied_versions(conn: psycopg.Connection) -> dict[int, str]:
    exists = conn.execute("SELECT to_regclass('neuron_tasks.schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT version, checksum FROM neuron_tasks.schema_migrations").fetchall()
    return {int(v): str(c) for v, c in rows}


def pending(url: str) -> list[Migration]:
    with psycopg.connect(url, autocommit=True) as conn:
        done = applied_versions(conn)
    return [m for m in load_migrations() if m.version not in done]


def upgrade(url: str) -> list[Migration]:
    """Apply every pending migration; returns the ones this call applied."""
    migrations = load_migrations()
    applied: list[Migration] = []
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS neuron_tasks")
        conn.execute(
            """CREATE TABLE IF NOT EXISTS neuron_tasks.schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
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
            conn.execute(
                "INSERT INTO neuron_tasks.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (m.version, m.name, m.checksum),
            )
            applied.append(m)
        if conn.execute("SELECT to_regclass('neuron_tasks.setting_defs') IS NOT NULL").fetchone()[0]:
            from neuron_tasks.core.runtime import sync_defs

            sync_defs(conn)  # setting definitions follow the installed code
    return applied
