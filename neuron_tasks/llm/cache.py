"""The result cache in Postgres (neuron_tasks.llm_cache).

Key: sha256 of operation + provider:model + the normalised input (canonical JSON), so the
same request hits whatever its spacing or key order. Each hit counts and stamps last_access.
Entries expire after llm_cache_ttl_s; "cache rotation" (`rotate`, run as the
llm_cache_rotate job) deletes expired entries, then the least recently used beyond
llm_cache_max_entries / llm_cache_max_mb. Embeddings are cached per text, as float32 bytes.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row, scalar_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from neuron_tasks import db
from neuron_tasks.llm.settings import LlmSettings
from neuron_tasks.sql import q


def normalise_text(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, trimmed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(operation: str, model: str, normalised_input: Any) -> bytes:
    """sha256(operation NUL model NUL canonical JSON of the normalised input)."""
    raw = f"{operation}\0{model}\0{canonical(normalised_input)}".encode()
    return hashlib.sha256(raw).digest()


@dataclass(frozen=True, slots=True)
class Hit:
    """A cache entry found by a lookup."""

    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Entry:
    key: bytes
    operation: str
    model: str
    input: Any
    value: bytes


class Cache:
    def __init__(self, pool: ConnectionPool, settings: LlmSettings) -> None:
        self.pool = pool
        self.settings = settings

    @property
    def enabled(self) -> bool:
        return self.settings.llm_cache_enabled

    def get_many(self, keys: list[bytes]) -> dict[bytes, bytes]:
        """Values of the keys found (and not expired); each counts a hit."""
        if not keys or not self.enabled:
            return {}

        def run() -> dict[bytes, bytes]:
            with self.pool.connection() as conn, conn.cursor(row_factory=class_row(Hit)) as cur:
                hits = cur.execute(q("cache_lookup"), {"keys": list(dict.fromkeys(keys))}).fetchall()
            return {bytes(h.key): bytes(h.value) for h in hits}

        return db.retrying(run, what="cache lookup")

    def put_many(self, entries: list[Entry]) -> None:
        if not entries or not self.enabled:
            return

        def run() -> None:
            with self.pool.connection() as conn:
                store(conn, entries, self.settings.llm_cache_ttl_s)

        db.retrying(run, what="cache store")


def store(conn: psycopg.Connection[Any], entries: list[Entry], ttl_s: float) -> None:
    """Insert or replace `entries` in one statement (on the caller's connection, so a caller can
    pipeline it with other writes); keys and values travel as binary bytea arrays."""
    unique = list({e.key: e for e in entries}.values())
    if not unique:
        return
    conn.execute(q("cache_store"), {
        "keys": [e.key for e in unique],
        "operations": [e.operation for e in unique],
        "models": [e.model for e in unique],
        "inputs": [Jsonb(e.input) for e in unique],
        "values": [e.value for e in unique],
        "ttl_s": ttl_s,
    })


def _count(pool: ConnectionPool, name: str, params: dict[str, Any]) -> int:
    """Run a statement that answers one count (rows deleted)."""
    with pool.connection() as conn, conn.cursor(row_factory=scalar_row) as cur:
        n = cur.execute(q(name), params).fetchone()
    return int(n) if n is not None else 0


def stats(pool: ConnectionPool) -> list[dict[str, Any]]:
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(q("cache_stats")).fetchall()


def clear(pool: ConnectionPool, operation: str | None = None) -> int:
    """Delete every entry (of one operation when given); returns how many."""
    return _count(pool, "cache_clear", {"operation": operation})


def rotate(pool: ConnectionPool, settings: LlmSettings) -> dict[str, int]:
    """Cache rotation: expired entries, then LRU beyond the size caps; also expired job results."""
    from neuron_tasks.core.results import PostgresResultBackend

    expired = _count(pool, "cache_expire", {})
    evicted = _count(pool, "cache_evict", {"max_entries": settings.llm_cache_max_entries,
                                           "max_bytes": int(settings.llm_cache_max_mb * 1024 * 1024)})
    results = PostgresResultBackend(pool=pool).purge_expired(limit=100_000)
    return {"expired": expired, "evicted": evicted, "results_purged": results}
