"""Text -> vector through the LLM part's embedding service (`neuron_tasks.llm.service.LlmService`),
looked up at call time, never at import: with it, text queries and `embed_and_index` work (and
share its Postgres embedding cache and usage accounting); without it (the llm extra not
installed), only vectors are accepted and `TextEmbeddingUnavailable` says so.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from psycopg_pool import ConnectionPool

from neuron_tasks.errors import NeuronTasksError

_services: dict[int, Any] = {}
_lock = threading.Lock()


class TextEmbeddingUnavailable(NeuronTasksError):
    """No embedding provider can be imported: pass vectors instead of text."""

    def __init__(self, why: str) -> None:
        super().__init__(
            f"text given but no embedding provider is available ({why}); pass vectors instead, or install the "
            "llm extra (`pip install 'neuron-tasks[llm]'`)"
        )


def service(pool: ConnectionPool) -> Any:
    """The LLM service on this pool (one per pool), or raise TextEmbeddingUnavailable."""
    with _lock:
        found = _services.get(id(pool))
        if found is None:
            try:
                from neuron_tasks.llm.service import LlmService
            except ImportError as exc:
                raise TextEmbeddingUnavailable(f"neuron_tasks.llm cannot be imported: {exc}") from None
            found = _services[id(pool)] = LlmService(pool)
        return found


def available() -> bool:
    try:
        from neuron_tasks.llm.service import LlmService  # noqa: F401
    except ImportError:
        return False
    return True


def embed_texts(pool: ConnectionPool, texts: list[str], *, tenant: str | None = None,
                model: str | None = None) -> np.ndarray:
    """float32 (n, dim) embeddings of `texts` from the configured provider (cached in Postgres)."""
    out = service(pool).embed(list(texts), tenant=tenant, model=model)
    return np.asarray(out["embeddings"], dtype=np.float32).reshape(len(texts), -1)
