"""One HNSW graph in memory (hnswlib), with our own live/tombstone bookkeeping.

hnswlib's `get_current_count()` counts deleted elements too, so we keep the live labels and the
tombstones (labels marked deleted that still hold a slot) ourselves. The index is created with
`allow_replace_deleted=True`: inserting a new label reuses a tombstone's slot
(`add_items(..., replace_deleted=True)`), and re-inserting a deleted label revives it with
`unmark_deleted` followed by an update. Not thread-safe: callers hold a lock.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from typing import Any

import numpy as np

MIN_CAPACITY = 1024


def _hnswlib() -> Any:
    import hnswlib

    return hnswlib


def as_matrix(vectors: Any, dim: int) -> np.ndarray:
    """Vectors as a C-contiguous float32 (n, dim) matrix; raises ValueError on a wrong shape."""
    arr = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("vectors contain NaN or infinity")
    return arr


def normalise(space: str, arr: np.ndarray) -> np.ndarray:
    """What hnswlib stores: cosine vectors are unit-normalised."""
    if space != "cosine":
        return arr
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return arr / norms


class Graph:
    def __init__(self, space: str, dim: int, index: Any, live: set[int], tombstones: set[int]) -> None:
        self.space = space
        self.dim = dim
        self.index = index
        self.live = live
        self.tombstones = tombstones
        self._ef = -1

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def new(cls, space: str, dim: int, m: int, ef_construction: int, capacity: int = MIN_CAPACITY) -> Graph:
        index = _hnswlib().Index(space=space, dim=dim)
        index.init_index(max_elements=max(capacity, MIN_CAPACITY), ef_construction=ef_construction, M=m,
                         allow_replace_deleted=True)
        return cls(space, dim, index, set(), set())

    @classmethod
    def from_bytes(cls, space: str, dim: int, data: bytes, capacity: int, tombstones: Iterable[int]) -> Graph:
        """Load a snapshot made by `to_bytes` (hnswlib's save_index format)."""
        index = _hnswlib().Index(space=space, dim=dim)
        fd, path = tempfile.mkstemp(prefix="nt-hnsw-", suffix=".bin")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            index.load_index(path, max_elements=max(capacity, MIN_CAPACITY), allow_replace_deleted=True)
        finally:
            os.unlink(path)
        dead = set(tombstones)
        present = {int(x) for x in index.get_ids_list()}
        return cls(space, dim, index, present - dead, dead & present)

    def to_bytes(self) -> bytes:
        fd, path = tempfile.mkstemp(prefix="nt-hnsw-", suffix=".bin")
        os.close(fd)
        try:
            self.index.save_index(path)
            with open(path, "rb") as fh:
                return fh.read()
        finally:
            os.unlink(path)

    def tombstone_bytes(self) -> bytes:
        return np.array(sorted(self.tombstones), dtype="<i8").tobytes()

    # -- counters ---------------------------------------------------------------------------
    @property
    def elements(self) -> int:
        """hnswlib's count: live items plus tombstones."""
        return int(self.index.get_current_count())

    @property
    def capacity(self) -> int:
        return int(self.index.get_max_elements())

    def counts(self) -> dict[str, int]:
        return {"live": len(self.live), "tombstones": len(self.tombstones), "elements": self.elements,
                "capacity": self.capacity}

    # -- writes -----------------------------------------------------------------------------
    def upsert(self, ids: list[int], vectors: np.ndarray, num_threads: int = 1) -> tuple[int, int]:
        """Insert or replace; returns (items that became live, tombstone slots reused)."""
        if not ids:
            return 0, 0
        # The last occurrence of a repeated id wins.
        last = {i: n for n, i in enumerate(ids)}
        if len(last) != len(ids):
            order = sorted(last.values())
            ids = [ids[n] for n in order]
            vectors = vectors[order]
        update_rows, new_rows, became_live = [], [], 0
        for n, label in enumerate(ids):
            if label in self.live:
                update_rows.append(n)
            elif label in self.tombstones:
                self.index.unmark_deleted(label)
                self.tombstones.discard(label)
                self.live.add(label)
                update_rows.append(n)
                became_live += 1
            else:
                new_rows.append(n)
        if update_rows:
            # An existing, non-deleted label: hnswlib updates the element in place.
            self.index.add_items(vectors[update_rows], [ids[n] for n in update_rows], num_threads=num_threads)
        reused = 0
        if new_rows:
            reused = min(len(new_rows), len(self.tombstones))
            self._reserve(len(new_rows) - reused)
            self.index.add_items(vectors[new_rows], [ids[n] for n in new_rows], num_threads=num_threads,
                                 replace_deleted=True)
            self.live.update(ids[n] for n in new_rows)
            became_live += len(new_rows)
            if reused:
                # Some tombstones' slots were taken; find which labels hnswlib dropped.
                present = {int(x) for x in self.index.get_ids_list()}
                self.tombstones &= present
        return became_live, reused

    def delete(self, ids: Iterable[int]) -> int:
        """Mark deleted (their slots are reused by later inserts); returns how many were live."""
        gone = 0
        for label in ids:
            if label in self.live:
                self.index.mark_deleted(label)
                self.live.discard(label)
                self.tombstones.add(label)
                gone += 1
        return gone

    def _reserve(self, extra: int) -> None:
        needed = self.elements + extra
        if needed > self.capacity:
            self.index.resize_index(max(needed, self.capacity * 2))

    # -- reads ------------------------------------------------------------------------------
    def set_ef(self, ef: int) -> None:
        if ef != self._ef:
            self.index.set_ef(ef)
            self._ef = ef

    def knn(self, queries: np.ndarray, k: int, ef: int, allowed: set[int] | None = None,
            num_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Labels and distances (n, k'), k' = min(k, candidates); brute force over small filters."""
        pool = len(self.live) if allowed is None else len(allowed & self.live)
        k = min(k, pool)
        if k <= 0:
            return np.zeros((len(queries), 0), dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32)
        if allowed is not None and pool <= max(2000, 50 * k):
            return self.exact(queries, k, sorted(allowed & self.live))
        self.set_ef(max(ef, k))
        try:
            if allowed is None:
                labels, dists = self.index.knn_query(queries, k=k, num_threads=num_threads)
            else:
                labels, dists = self.index.knn_query(queries, k=k, num_threads=num_threads,
                                                     filter=lambda label: label in allowed)
        except RuntimeError:
            # hnswlib could not find k results (ef too small for a sparse filter): exact answer.
            ids = sorted(self.live if allowed is None else allowed & self.live)
            return self.exact(queries, k, ids)
        return labels.astype(np.int64), dists

    def vectors(self, ids: list[int]) -> np.ndarray:
        """The stored (for cosine: normalised) vectors of live ids."""
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self.index.get_items(ids), dtype=np.float32).reshape(len(ids), self.dim)

    def exact(self, queries: np.ndarray, k: int, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        data = self.vectors(ids)
        order, dist = exact_knn(self.space, data, normalise(self.space, queries), k)
        return np.asarray(ids, dtype=np.int64)[order], dist


def distances(space: str, data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """hnswlib's distances between each query and each row: l2 squared, 1 - dot for ip/cosine
    (vectors already normalised for cosine)."""
    dots = queries @ data.T
    if space == "l2":
        return np.maximum((queries * queries).sum(1)[:, None] - 2 * dots + (data * data).sum(1)[None, :], 0)
    return 1.0 - dots


def exact_knn(space: str, data: np.ndarray, queries: np.ndarray, k: int,
              chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force k nearest rows of `data` for each query: (row positions, distances), sorted."""
    k = min(k, len(data))
    out_idx = np.empty((len(queries), k), dtype=np.int64)
    out_dist = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        d = distances(space, data, queries[start:start + chunk])
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < d.shape[1] else np.tile(np.arange(d.shape[1]),
                                                                                        (len(d), 1))
        pd = np.take_along_axis(d, part, axis=1)
        order = np.argsort(pd, axis=1, kind="stable")
        out_idx[start:start + len(d)] = np.take_along_axis(part, order, axis=1)
        out_dist[start:start + len(d)] = np.take_along_axis(pd, order, axis=1)
    return out_idx, out_dist
