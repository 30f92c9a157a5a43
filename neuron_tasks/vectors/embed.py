"""Text -> vector through the LLM issue's embedding provider, when it is installed.

`neuron_tasks.llm` is looked up at call time (never at import): if it offers an embedding
function, text queries and `embed_and_index` use it; otherwise only vectors are accepted and
`TextEmbeddingUnavailable` says so.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import NeuronTasksError


class TextEmbeddingUnavailable(NeuronTasksError):
    """No embedding provider can be imported: pass vectors instead of text."""

    def __init__(self, why: str) -> None:
        super().__init__(
            "text given but no embedding provider is available "
            f"({why}); pass vectors, or install the llm extra (`pip install 'neuron-tasks[llm]'`)"
        )


#: Functions in neuron_tasks.llm (or its submodules) that turn a list of texts into vectors.
_CANDIDATES = (
    ("neuron_tasks.llm", "embed_texts"),
    ("neuron_tasks.llm", "embed"),
    ("neuron_tasks.llm.embeddings", "embed_texts"),
    ("neuron_tasks.llm.embeddings", "embed"),
    ("neuron_tasks.llm.providers", "embed_texts"),
)
_PROVIDER_FACTORIES = (
    ("neuron_tasks.llm", "default_provider"),
    ("neuron_tasks.llm", "get_provider"),
    ("neuron_tasks.llm.providers", "default_provider"),
    ("neuron_tasks.llm.providers", "get_provider"),
)


def _lookup(module: str, attr: str) -> Any:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return getattr(mod, attr, None)


def text_embedder() -> Callable[[list[str]], np.ndarray]:
    """A function texts -> float32 (n, dim) matrix, or raise TextEmbeddingUnavailable."""
    if _lookup("neuron_tasks.llm", "__name__") is None:
        raise TextEmbeddingUnavailable("neuron_tasks.llm is not importable")
    for module, attr in _CANDIDATES:
        fn = _lookup(module, attr)
        if callable(fn) and not inspect.isclass(fn):
            return lambda texts, fn=fn: np.asarray(fn(list(texts)), dtype=np.float32)
    for module, attr in _PROVIDER_FACTORIES:
        factory = _lookup(module, attr)
        if callable(factory):
            provider = factory()
            for method in ("embed", "embed_texts", "encode"):
                fn = getattr(provider, method, None)
                if callable(fn):
                    return lambda texts, fn=fn: np.asarray(fn(list(texts)), dtype=np.float32)
    raise TextEmbeddingUnavailable("neuron_tasks.llm offers no embed function yet")


def embed_texts(texts: list[str]) -> np.ndarray:
    return text_embedder()(texts)
