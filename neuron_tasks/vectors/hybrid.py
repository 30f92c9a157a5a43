"""Hybrid search (vector similarity + PostgreSQL full-text rank, weight alpha) and the tuning
of alpha from relevance feedback (NDCG@10). `Vectors.hybrid_search` searches with these."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from neuron_tasks.sql import q
from neuron_tasks.vectors.base import IndexState
from neuron_tasks.vectors.graph import distances, normalise

#: Candidates taken from each side (vector neighbours, full-text matches) before re-scoring.
POOL = 100


@dataclass
class Candidates:
    ids: np.ndarray  # (n,)
    vector: np.ndarray  # similarity, min-max scaled to [0, 1]
    text: np.ndarray  # full-text rank, scaled to [0, 1]


def _scale(x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    return np.zeros_like(x) if hi - lo < 1e-12 else (x - lo) / (hi - lo)


def candidates(pool: ConnectionPool, st: IndexState, text: str, vec: np.ndarray, ef: int,
               allowed: set[int] | None = None, size: int = POOL) -> Candidates:
    """The union of the vector top-`size` and the full-text top-`size`, with both scores
    (full-text ranks read through `pool`)."""
    with st.lock:
        labels, _ = st.graph.knn(vec, size, max(ef, size), allowed)
    ids = {int(i) for i in labels[0]}
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(q("vec_text_candidates"), {"name": st.name, "text": text,
                                                      "text_config": st.text_config, "limit": size}).fetchall()
        text_ids = {int(r["id"]) for r in rows}
        if allowed is not None:
            text_ids &= allowed
        ids |= text_ids
        ordered = sorted(ids)
        ranked = cur.execute(q("vec_text_ranks"), {"name": st.name, "text": text, "ids": ordered,
                                                   "text_config": st.text_config}).fetchall()
        ranks: dict[int, float] = {r["id"]: r["rank"] for r in ranked}
    with st.lock:
        ordered = [i for i in ordered if i in st.graph.live]
        data = st.graph.vectors(ordered)
    dist = distances(st.space, data, normalise(st.space, vec))[0] if ordered else np.zeros(0)
    sim = -dist
    arr = np.asarray(ordered, dtype=np.int64)
    return Candidates(arr, _scale(sim.astype(np.float64)),
                      _scale(np.asarray([float(ranks.get(i, 0.0)) for i in ordered], dtype=np.float64)))


def rank(c: Candidates, alpha: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    score = alpha * c.vector + (1 - alpha) * c.text
    order = np.lexsort((c.ids, -score))[:k]
    return c.ids[order], score[order]


def ndcg_at(ranked: np.ndarray, relevant: set[int], k: int = 10) -> float:
    gains = np.array([1.0 if int(i) in relevant else 0.0 for i in ranked[:k]])
    dcg = float((gains / np.log2(np.arange(2, len(gains) + 2))).sum()) if len(gains) else 0.0
    ideal = min(len(relevant), k)
    idcg = float((1.0 / np.log2(np.arange(2, ideal + 2))).sum()) if ideal else 0.0
    return dcg / idcg if idcg else 0.0


def best_alpha(pools: list[tuple[Candidates, set[int]]], grid: int, current: float) -> tuple[float, float, float,
                                                                                            list[dict[str, float]]]:
    """The alpha (on a grid over [0, 1]) maximising mean NDCG@10; ties go to the one nearest
    the current alpha. Returns (alpha, ndcg at it, ndcg at current, the curve)."""
    alphas = sorted({round(x, 4) for x in np.linspace(0, 1, grid)} | {round(current, 4)})
    curve = []
    for a in alphas:
        curve.append({"alpha": a, "ndcg": float(np.mean([ndcg_at(rank(c, a, 10)[0], rel) for c, rel in pools]))})
    best = max(curve, key=lambda r: (round(r["ndcg"], 9), -abs(r["alpha"] - current)))
    now = next(r["ndcg"] for r in curve if r["alpha"] == round(current, 4))
    return best["alpha"], best["ndcg"], now, curve
