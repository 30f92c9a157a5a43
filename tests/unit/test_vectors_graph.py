"""The in-memory graph (hnswlib) bookkeeping, brute force, and the tuner's choice logic: no database."""

from __future__ import annotations

import numpy as np
import pytest

from neuron_tasks.vectors.graph import Graph, exact_knn, normalise
from neuron_tasks.vectors.hybrid import Candidates, best_alpha, ndcg_at
from neuron_tasks.vectors.tuner import Measurement, choose_search, choose_step

pytest.importorskip("hnswlib")


def data(n: int = 500, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_counters_delete_revive_and_slot_reuse() -> None:
    g = Graph.new("l2", 8, 8, 50, capacity=10)
    x = data(300)
    g.upsert(list(range(300)), x)
    assert g.counts()["live"] == 300 and g.elements == 300 and g.capacity >= 300
    assert g.delete([1, 2, 3, 999]) == 3
    # hnswlib still counts the deleted items; we do not.
    assert g.elements == 300 and len(g.live) == 297 and g.tombstones == {1, 2, 3}
    labels, _ = g.knn(x[1:4], 5, 50)
    assert not set(labels.ravel().tolist()) & {1, 2, 3}
    # Re-adding a deleted id revives it (unmark_deleted + update), no new slot.
    became, reused = g.upsert([2], x[2:3])
    assert (became, reused) == (1, 0) and 2 in g.live and g.tombstones == {1, 3}
    # New ids reuse the tombstones' slots (replace_deleted).
    became, reused = g.upsert([1000, 1001, 1002], data(3, seed=9))
    assert became == 3 and reused == 2 and g.elements == 301 and not g.tombstones
    assert len(g.live) == 301


def test_upsert_replaces_vector_and_snapshot_round_trip() -> None:
    g = Graph.new("cosine", 8, 8, 50)
    x = data(100)
    g.upsert(list(range(100)), x)
    g.upsert([7], -x[7:8])
    labels, dist = g.knn(-x[7:8], 1, 50)
    assert labels[0, 0] == 7 and dist[0, 0] == pytest.approx(0, abs=1e-5)
    g.delete([5])
    h = Graph.from_bytes("cosine", 8, g.to_bytes(), g.capacity, g.tombstones)
    assert h.live == g.live and h.tombstones == {5} and h.elements == g.elements
    assert h.knn(x[:3], 5, 50)[0].tolist() == g.knn(x[:3], 5, 50)[0].tolist()


def test_filter_and_small_index() -> None:
    g = Graph.new("l2", 8, 8, 50)
    x = data(50)
    g.upsert(list(range(50)), x)
    labels, _ = g.knn(x[:1], 10, 10, allowed={3, 4, 5})
    assert sorted(labels[0].tolist()) == [3, 4, 5]
    labels, _ = g.knn(x[:1], 100, 10)
    assert labels.shape == (1, 50)


def test_exact_knn_matches_numpy() -> None:
    x, qs = data(400), data(5, seed=3)
    for space in ("l2", "ip", "cosine"):
        d, q = normalise(space, x), normalise(space, qs)
        pos, _ = exact_knn(space, d, q, 10, chunk=2)
        if space == "l2":
            ref = np.argsort(((q[:, None, :] - d[None]) ** 2).sum(-1), axis=1)[:, :10]
        else:
            ref = np.argsort(-(q @ d.T), axis=1)[:, :10]
        assert (pos == ref).all()


def fake(recall_at: dict[int, float] | None = None, slope: float = 0.01) -> tuple[list[int], object]:
    calls: list[int] = []

    def evaluate(ef: int) -> Measurement:
        calls.append(ef)
        r = min(1.0, 0.5 + ef / 200) if recall_at is None else recall_at.get(ef, min(1.0, 0.5 + ef / 200))
        lat = ef * slope
        return Measurement(ef, r, lat, lat, lat, lat)

    return calls, evaluate


def test_search_finds_cheapest_ef_within_budget() -> None:
    # recall = 0.5 + ef/200 >= 0.955 from ef = 91
    calls, ev = fake()
    ef, _reason, alert, _seen = choose_search(ev, 10, target_recall=0.95, target_latency_ms=100, lo=10, hi=1024,
                                            max_evals=10, margin=0.005)
    assert 91 <= ef <= 96 and alert is None and len(calls) <= 10
    calls, ev = fake()
    ef, *_ = choose_search(ev, 800, target_recall=0.95, target_latency_ms=100, lo=10, hi=1024, max_evals=10,
                           margin=0.005)
    assert 91 <= ef <= 96 and len(calls) <= 10


def test_search_favours_recall_and_alerts() -> None:
    _, ev = fake(slope=1.0)  # p95 = ef ms
    ef, reason, alert, _ = choose_search(ev, 40, target_recall=0.95, target_latency_ms=20, lo=10, hi=1024,
                                         max_evals=10, margin=0.005)
    assert ef >= 91 and alert and "favouring recall" in reason
    _calls, ev = fake(recall_at=dict.fromkeys(range(2000), 0.5))
    ef, reason, alert, _ = choose_search(ev, 40, target_recall=0.95, target_latency_ms=20, lo=10, hi=256,
                                         max_evals=10, margin=0.0)
    assert alert and ef == 40  # nothing better: the cheapest of the equal-recall ones


def test_step_baseline() -> None:
    _, ev = fake()
    assert choose_step(ev, 40, target_recall=0.95, target_latency_ms=100, lo=10, hi=1024)[0] == 48
    _, ev = fake(slope=1.0)
    assert choose_step(ev, 200, target_recall=0.95, target_latency_ms=10, lo=10, hi=1024)[0] == 160
    assert choose_step(ev, 40, target_recall=0.95, target_latency_ms=10, lo=10, hi=1024)[2] is not None


def test_ndcg_and_alpha() -> None:
    assert ndcg_at(np.array([1, 2, 3]), {1}) == 1.0
    assert ndcg_at(np.array([2, 1]), {1}) == pytest.approx(1 / np.log2(3))
    # Text score knows the answer, vector score does not: alpha goes to 0.
    c = Candidates(np.arange(5), np.array([1.0, 0.8, 0.6, 0.4, 0.0]), np.array([0.0, 0.0, 0.0, 0.0, 1.0]))
    alpha, ndcg, before, curve = best_alpha([(c, {4})], 11, 0.5)
    assert alpha < 0.5 and ndcg == 1.0 and before < 1.0 and len(curve) == 11
