"""Named HNSW vector indexes (hnswlib) with PostgreSQL as the source of truth, query metrics,
recall sampling, the SLO auto-tuner and hybrid (vector + full-text) search.

    from neuron_tasks import vectors
    vectors.create_index("docs", dim=384)
    vectors.add("docs", ids=[1, 2], vectors=[v1, v2], metadata=[{"lang": "en"}, None])
    res = vectors.search("docs", query_vector, k=10, filter={"lang": "en"})
    res.ids, res.query_id

The functions below use one `Vectors` client per process, configured from the environment
(NEURON_TASKS_DATABASE_URL, NEURON_TASKS_VECTORS_*, NEURON_TASKS_TUNER_*). hnswlib and numpy
are imported only when an index is used.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from neuron_tasks.vectors.client import Hit, SearchResult, UnknownIndex, Vectors
from neuron_tasks.vectors.settings import VectorSettings

__all__ = ["Hit", "SearchResult", "UnknownIndex", "VectorSettings", "Vectors", "add", "client", "create_index",
           "delete", "drop_index", "feedback", "hybrid_search", "search", "stats", "upsert"]

_client: Vectors | None = None
_lock = threading.Lock()


def client() -> Vectors:
    """This process's default client (built from the environment on first use)."""
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                _client = Vectors()
    return _client


def set_client(c: Vectors | None) -> None:
    global _client
    with _lock:
        _client = c


def create_index(name: str, dim: int, **options: Any) -> dict[str, Any]:
    return client().create_index(name, dim, **options)


def drop_index(name: str) -> bool:
    return client().drop_index(name)


def add(index: str, ids: Sequence[int], vectors: Any, **kw: Any) -> int:
    return client().add(index, ids, vectors, **kw)


upsert = add


def delete(index: str, ids: Sequence[int]) -> int:
    return client().delete(index, ids)


def search(index: str, query: Any, k: int = 10, ef: int | None = None, filter: Any = None,
           **kw: Any) -> SearchResult:
    return client().search(index, query, k, ef, filter, **kw)


def hybrid_search(index: str, text: str, k: int = 10, **kw: Any) -> SearchResult:
    return client().hybrid_search(index, text, k, **kw)


def feedback(query_id: Any, relevant_ids: Sequence[int], **kw: Any) -> None:
    client().feedback(query_id, relevant_ids, **kw)


def stats(index: str | None = None, window_s: float = 600) -> list[dict[str, Any]]:
    return client().stats(index, window_s)
