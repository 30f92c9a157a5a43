"""The provider interface (embed, complete, rerank) and what providers return."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a call cost; `estimated` when counted from characters (local models)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def estimate_tokens(*texts: str) -> int:
    """About four characters per token (the usual rule of thumb for English)."""
    return sum(math.ceil(len(t) / 4) for t in texts)


@dataclass(slots=True)
class Embeddings:
    vectors: Any  # numpy array (n, dims), float32
    model: str
    usage: Usage


@dataclass(slots=True)
class Completion:
    text: str
    model: str
    usage: Usage
    finish_reason: str | None = None


@dataclass(slots=True)
class Ranking:
    results: list[tuple[int, float]]  # (document index, score), best first
    model: str
    usage: Usage
    method: str = "provider"
    meta: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    """What every provider does. `name` is "local" or "http"; `key` identifies the endpoint."""

    name: str
    key: str

    def default_model(self, operation: str) -> str: ...

    def embed(self, texts: list[str], model: str) -> Embeddings: ...

    def complete(
        self, messages: list[dict[str, Any]], model: str, *, max_tokens: int, temperature: float,
        extra: dict[str, Any],
    ) -> Completion: ...

    def rerank(self, query: str, documents: list[str], model: str, top_n: int) -> Ranking: ...
