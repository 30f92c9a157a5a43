"""What our own path costs per text, with the model taken out.

`FixedVectors` is an embedding provider that costs nothing: it hands back rows of a fixed
random unit-vector matrix (realistic numbers, so results encode like real ones). Jobs and
`LlmService.embed_many` run against it show our work around the model: cache reads and
writes, usage rows, results, the queue. `Cpu` reads the CPU seconds of this process and of
the PostgreSQL backends serving the benchmark database (same machine only; /proc).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from neuron_tasks.llm.base import Completion, Embeddings, Ranking, Usage, estimate_tokens

NAME = "fixed"


class FixedVectors:
    """A provider whose embed costs nothing (fixed 384-dimension unit vectors)."""

    name = NAME
    key = NAME

    def __init__(self, dims: int = 384, rows: int = 1024) -> None:
        m = np.random.default_rng(7).standard_normal((rows, dims)).astype(np.float32)
        self.rows = m / np.linalg.norm(m, axis=1, keepdims=True)
        self.calls = 0

    def default_model(self, operation: str) -> str:
        return "no-cost"

    def embed(self, texts: list[str], model: str) -> Embeddings:
        self.calls += 1
        picked = self.rows[np.arange(len(texts)) % len(self.rows)]
        return Embeddings(picked, model, Usage(prompt_tokens=estimate_tokens(*texts), estimated=True))

    def complete(self, messages: list[dict[str, Any]], model: str, *, max_tokens: int, temperature: float,
                 extra: dict[str, Any]) -> Completion:
        raise NotImplementedError("the no-cost provider only embeds")

    def rerank(self, query: str, documents: list[str], model: str, top_n: int) -> Ranking:
        raise NotImplementedError("the no-cost provider only embeds")


@dataclass
class Spent:
    wall_s: float
    python_s: float  # CPU of this process, every thread
    postgres_s: float | None  # CPU of the database's backends (None: server not on this machine)


def _backend_pids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]


def _cpu_of(pids: list[int]) -> float | None:
    total, seen = 0, False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seen = True
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK") if seen else None


class Cpu:
    """CPU spent between start() and stop(); the pool's backends live across a phase."""

    def __init__(self, url: str) -> None:
        self.url = url

    def start(self) -> None:
        self._pids = _backend_pids(self.url)
        self._pg0 = _cpu_of(self._pids)
        self._py0 = time.process_time()
        self._t0 = time.perf_counter()

    def stop(self) -> Spent:
        wall = time.perf_counter() - self._t0
        py = time.process_time() - self._py0
        pids = sorted(set(self._pids) | set(_backend_pids(self.url)))
        pg1 = _cpu_of(pids)
        # backends that started during the phase count from zero
        pg = None if pg1 is None else pg1 - (self._pg0 or 0.0)
        return Spent(wall, py, pg)
