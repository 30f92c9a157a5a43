"""What the vector modules share: an index as one process holds it, search hits and results,
the stored form of a vector, and the error for an unknown index."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neuron_tasks.errors import NeuronTasksError
from neuron_tasks.vectors.graph import Graph


class UnknownIndex(NeuronTasksError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no vector index named {name!r}; create it with `neuron-tasks index create {name} --dim N`")


@dataclass
class Hit:
    id: int
    distance: float
    score: float | None = None
    metadata: dict[str, Any] | None = None
    text: str | None = None


@dataclass
class SearchResult:
    query_id: uuid.UUID
    index: str
    k: int
    ef: int
    latency_ms: float
    hits: list[Hit]
    mode: str = "vector"
    alpha: float | None = None

    @property
    def ids(self) -> list[int]:
        return [h.id for h in self.hits]


@dataclass
class IndexState:
    """One index as this process holds it."""

    name: str
    space: str
    dim: int
    m: int
    ef_construction: int
    text_config: str
    graph: Graph
    seq: int
    ef: int
    alpha: float
    params_version: int
    loaded_from: str
    checked_at: float = 0.0
    graph_version: int | None = None  # None: not known (a graph being built beside the served one)
    changed_since_snapshot: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)


def encode(vec: np.ndarray) -> bytes:
    """A vector as stored in PostgreSQL: little-endian float32."""
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def decode(data: bytes, dim: int) -> np.ndarray:
    """Stored vectors (concatenated) as a (n, dim) float32 matrix."""
    return np.frombuffer(data, dtype="<f4").reshape(-1, dim)
