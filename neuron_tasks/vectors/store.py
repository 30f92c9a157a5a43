"""The vector part's statements on the caller's connection, inside the caller's transaction:
create and drop an index, read its dimension and published parameters, write and delete items,
read live items.

`Vectors` works through these functions, and so do other parts that write an index inside
their own transactions (a pipeline with an `index:NAME` destination): the vector tables are
read and written by this part's named queries only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import class_row, dict_row, scalar_row
from psycopg.types.json import Jsonb

from neuron_tasks.sql import q
from neuron_tasks.vectors.base import UnknownIndex, encode
from neuron_tasks.vectors.settings import VectorSettings

SPACES = ("l2", "ip", "cosine")


@dataclass(frozen=True, slots=True)
class Published:
    """What a searcher polls: the published ef/alpha, the data sequence and the graph version."""

    ef_search: int
    alpha: float
    params_version: int
    data_seq: int
    graph_version: int | None


@dataclass(frozen=True, slots=True)
class LiveVector:
    id: int
    embedding: bytes


@dataclass(frozen=True, slots=True)
class _WriteStart:
    data_seq: int
    text_config: str


def create_index(conn: psycopg.Connection[Any], name: str, dim: int, *, space: str = "cosine", m: int | None = None,
                 ef_construction: int | None = None, ef_search: int | None = None, text_config: str = "english",
                 settings: VectorSettings | None = None) -> dict[str, Any]:
    """Register a new, empty index (fails if the name is taken); unset HNSW parameters come from
    the settings' defaults. Returns the index's row."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, not {space!r}")
    s = settings or VectorSettings()
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("vec_create_index"), {
            "name": name, "space": space, "dim": dim, "m": m or s.vectors_default_m,
            "ef_construction": ef_construction or s.vectors_default_ef_construction,
            "ef_search": ef_search or s.vectors_default_ef, "text_config": text_config}).fetchone()
    if row is None:
        raise RuntimeError(f"creating vector index {name} returned no row")
    return row


def drop_index(conn: psycopg.Connection[Any], name: str) -> bool:
    """Drop an index with its items, snapshot, metrics and decisions; False when there was none."""
    with conn.cursor(row_factory=scalar_row) as cur:
        return bool(cur.execute(q("vec_drop_index"), {"name": name}).fetchone())


def index_dim(conn: psycopg.Connection[Any], name: str) -> int | None:
    """The dimension of an index (None: no such index)."""
    with conn.cursor(row_factory=scalar_row) as cur:
        dim = cur.execute(q("vec_index_dim"), {"name": name}).fetchone()
    return None if dim is None else int(dim)


def published(conn: psycopg.Connection[Any], name: str) -> Published | None:
    """The index's published parameters and sequences (None: no such index)."""
    with conn.cursor(row_factory=class_row(Published)) as cur:
        return cur.execute(q("vec_params"), {"name": name}).fetchone()


def repeatable_read(conn: psycopg.Connection[Any]) -> None:
    """Make the caller's transaction (just begun) one consistent snapshot of the tables."""
    conn.execute(q("vec_repeatable_read"))


def live_batches(conn: psycopg.Connection[Any], name: str, upto: int, size: int, *,
                 label: str = "vectors") -> Iterator[list[LiveVector]]:
    """Every live vector of `name` up to sequence `upto`, in id order, `size` at a time (a
    server-side cursor, in the caller's transaction)."""
    with conn.cursor(name=f"nt_{label}_{uuid.uuid4().hex[:8]}", row_factory=class_row(LiveVector)) as cur:
        cur.execute(q("vec_live_vectors"), {"name": name, "upto": upto})
        while batch := cur.fetchmany(size):
            yield batch


def live_metadata(conn: psycopg.Connection[Any], name: str, ids: Sequence[int]) -> dict[int, Any]:
    """The metadata (a JSON document, usually an object) of those of `ids` that are live items
    of index `name`."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(q("vec_item_metadata"), {"name": name, "ids": list(ids)}).fetchall()
    return {int(r["id"]): r["metadata"] for r in rows}


def write_items(conn: psycopg.Connection[Any], name: str, ids: list[int], mat: np.ndarray,
                metas: Sequence[dict[str, Any] | None], bodies: Sequence[str | None]) -> int:
    """Upsert items of index `name` inside the caller's transaction (`conn`): takes the index's
    row lock and next data sequence, writes the rows, keeps the counters. Returns the sequence.
    Searching processes replay the write once it commits. `mat` must have the index's dim."""
    with conn.cursor(row_factory=class_row(_WriteStart)) as cur:
        start = cur.execute(q("vec_begin_write"), {"name": name}).fetchone()
    if start is None:
        raise UnknownIndex(name)
    seq = int(start.data_seq)
    distinct = sorted(set(ids))
    with conn.cursor(row_factory=scalar_row) as cur:
        live_before = cur.execute(q("vec_count_live"), {"name": name, "ids": distinct}).fetchone()
    conn.execute(q("vec_upsert_items"), {
        "name": name, "seq": seq, "text_config": start.text_config, "ids": ids,
        "embeddings": [encode(v) for v in mat],
        "metadata": [Jsonb(m) if m is not None else None for m in metas], "bodies": list(bodies)})
    new = len(distinct) - int(live_before or 0)
    conn.execute(q("vec_update_counts"), {"name": name, "live_delta": new, "deleted": 0, "reused": new})
    return seq


def delete_items(conn: psycopg.Connection[Any], name: str, ids: list[int]) -> tuple[int, list[int]]:
    """Tombstone items of index `name` inside the caller's transaction; returns (sequence, the
    ids that were live)."""
    with conn.cursor(row_factory=class_row(_WriteStart)) as cur:
        start = cur.execute(q("vec_begin_write"), {"name": name}).fetchone()
    if start is None:
        raise UnknownIndex(name)
    seq = int(start.data_seq)
    with conn.cursor(row_factory=scalar_row) as cur:
        gone = [int(i) for i in cur.execute(q("vec_delete_items"), {"name": name, "seq": seq, "ids": ids}).fetchall()]
    conn.execute(q("vec_update_counts"), {"name": name, "live_delta": -len(gone), "deleted": len(gone), "reused": 0})
    return seq, gone
