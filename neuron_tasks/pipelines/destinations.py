"""Where a pipeline writes: a destination table, or a vector index (`index:NAME`).

Both are written inside the sync's batch transaction, together with the removal of the
processed backlog entries, so a batch is all or nothing.

* A table: (key, embedding real[], source_hash, model, created_at, updated_at).
* A vector index of neuron_tasks.vectors: item id = the key for integer keys, else a 63-bit
  hash of it (SQL `pipeline_item_id_v1`); metadata {"pipeline", "key", "source_hash", "model"};
  the text is stored as the item's body, so hybrid (vector + full-text) search works on it.
  The index is created at the first write with the model's dimension (cosine, the vector
  settings' m / ef); an existing index of another dimension fails the sync with a clear error.
  Searching processes see the items after their next refresh (`vectors_sync_s`). The index is
  created, read and written through the vector part's own functions (neuron_tasks.vectors.store).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import class_row, dict_row

from neuron_tasks.pgarray import Float4Array
from neuron_tasks.pipelines.manage import PipelineError
from neuron_tasks.sql import q
from neuron_tasks.vectors import store

INDEX_PREFIX = "index:"


class Destination(Protocol):
    def current(self, conn: psycopg.Connection[Any], keys: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        """(source_hash of each key present, error of each key that cannot be written)."""

    def write(self, conn: psycopg.Connection[Any], keys: list[str], vectors: np.ndarray, hashes: list[str],
              texts: list[str], model: str) -> None: ...

    def delete(self, conn: psycopg.Connection[Any], keys: list[str]) -> None: ...


def destination_for(p: dict[str, Any]) -> Destination:
    dest = str(p["destination"])
    if dest.startswith(INDEX_PREFIX):
        return IndexDestination(p["name"], dest.removeprefix(INDEX_PREFIX), p["key_type"])
    return TableDestination(dest)


class TableDestination:
    def __init__(self, table: str) -> None:
        dst = sql.SQL(table)  # stored quoted by create_pipeline (format('%I.%I'))
        self._hashes = sql.SQL("SELECT key, source_hash FROM {dst} WHERE key = ANY(%s)").format(dst=dst)
        self._upsert = sql.SQL(
            "INSERT INTO {dst} AS d (key, embedding, source_hash, model) "
            "SELECT u.key, (%(flat)s::real[])[(u.i - 1) * %(dim)s + 1 : u.i * %(dim)s], u.source_hash, %(model)s "
            "FROM unnest(%(keys)s::text[], %(hashes)s::text[]) WITH ORDINALITY AS u(key, source_hash, i) "
            "ON CONFLICT (key) DO UPDATE SET embedding = excluded.embedding, source_hash = excluded.source_hash, "
            "model = excluded.model, updated_at = now()").format(dst=dst)
        self._delete = sql.SQL("DELETE FROM {dst} WHERE key = ANY(%s)").format(dst=dst)

    def current(self, conn: psycopg.Connection[Any], keys: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(self._hashes, [keys]).fetchall()
        return {r["key"]: r["source_hash"] for r in rows}, {}

    def write(self, conn: psycopg.Connection[Any], keys: list[str], vectors: np.ndarray, hashes: list[str],
              texts: list[str], model: str) -> None:
        flat = Float4Array(vectors)
        conn.execute(self._upsert, {"flat": flat, "dim": flat.dim, "model": model, "keys": keys, "hashes": hashes})

    def delete(self, conn: psycopg.Connection[Any], keys: list[str]) -> None:
        conn.execute(self._delete, [keys])


@dataclass(frozen=True, slots=True)
class _ItemId:
    """The vector index item id of a source key."""

    key: str
    id: int


def _text(value: Any) -> str | None:
    """A metadata value as text, as jsonb's ->> gives it."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


class IndexDestination:
    def __init__(self, pipeline: str, index: str, key_type: str) -> None:
        self.pipeline, self.index, self.key_type = pipeline, index, key_type
        self._ids: dict[str, int] = {}
        self._dim: int | None = None  # checked (or created) once per sync

    def current(self, conn: psycopg.Connection[Any], keys: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        have: dict[str, str] = {}
        errors: dict[str, str] = {}
        with conn.cursor(row_factory=class_row(_ItemId)) as cur:
            ids = cur.execute(q("pipeline_item_ids"), {"key_type": self.key_type, "keys": keys}).fetchall()
        # The ids of this window's keys (write and delete come after, same window).
        self._ids = {r.key: int(r.id) for r in ids}
        live = store.live_metadata(conn, self.index, [int(r.id) for r in ids])
        for r in ids:
            key, item_id = r.key, int(r.id)
            meta = live.get(item_id)
            fields = meta if isinstance(meta, dict) else {}  # not live, or metadata that is no object
            owner, source_hash = _text(fields.get("key")), _text(fields.get("source_hash"))
            if item_id < 0:
                errors[key] = f"key {key} is negative: vector index ids must be >= 0"
            elif owner is not None and owner != key:
                errors[key] = (f"item id {item_id} of index {self.index} already holds key {owner!r} "
                               f"(hash collision or another writer)")
            elif owner is not None and source_hash is not None:
                have[key] = source_hash
        return have, errors

    def _ensure_index(self, conn: psycopg.Connection[Any], dim: int) -> None:
        if self._dim == dim:
            return
        have = store.index_dim(conn, self.index)
        if have is None:
            store.create_index(conn, self.index, dim, space="cosine", text_config="english")
        elif have != dim:
            raise PipelineError(f"vector index {self.index} has dimension {have} but the pipeline's model "
                                f"gives {dim}: use another index, or drop and recreate it")
        self._dim = dim

    def write(self, conn: psycopg.Connection[Any], keys: list[str], vectors: np.ndarray, hashes: list[str],
              texts: list[str], model: str) -> None:
        mat = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        self._ensure_index(conn, int(mat.shape[1]))
        metas: Sequence[dict[str, Any]] = [
            {"pipeline": self.pipeline, "key": k, "source_hash": h, "model": model}
            for k, h in zip(keys, hashes, strict=True)]
        store.write_items(conn, self.index, [self._ids[k] for k in keys], mat, metas, texts)

    def delete(self, conn: psycopg.Connection[Any], keys: list[str]) -> None:
        # Only keys found live in the index (by current()) are deleted, so the index exists.
        store.delete_items(conn, self.index, [self._ids[k] for k in keys])
