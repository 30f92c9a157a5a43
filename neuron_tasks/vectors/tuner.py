"""The SLO auto-tuner, per index.

Each cycle takes the recent sampled queries, computes their exact neighbours by brute force
(numpy, cached while the index does not change), fills in the recall each sample got at the ef
it was served with, then measures recall and latency at candidate ef values and publishes the
chosen ef (every searching process applies it within `vectors_sync_s`). Every decision is
recorded in `vector_tuner_decisions`.

Strategies:
  search  bracket the current ef by doubling/halving, then bisect to 5 %: the cheapest ef whose
          recall meets target (+ margin); if its p95 misses the latency target, keep recall
          and raise the alert (no cheaper ef can meet recall); at most `tuner_max_evaluations`.
  step    the simple baseline: one measurement at the current ef; x1.2 when recall is below
          target and latency within it, x0.8 when latency is above target and recall meets it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from psycopg.types.json import Jsonb

from neuron_tasks.sql import q
from neuron_tasks.vectors.base import IndexState, decode
from neuron_tasks.vectors.graph import Graph, exact_knn, normalise
from neuron_tasks.vectors.hybrid import best_alpha, candidates

if TYPE_CHECKING:
    from neuron_tasks.vectors.client import Vectors


@dataclass
class Measurement:
    ef: int
    recall: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    recall_sem: float = 0.0  # standard error of the mean recall over the sampled queries


@dataclass
class Workload:
    """Sampled queries with their exact neighbours (positions into nothing: real ids)."""

    queries: np.ndarray  # (n, dim) as searched
    ks: np.ndarray  # (n,)
    exact: np.ndarray  # (n, kmax) ids, -1 padded


@dataclass
class Decision:
    index: str
    strategy: str
    old_ef: int
    new_ef: int
    reason: str
    alert: str | None = None
    before: Measurement | None = None
    after: Measurement | None = None
    samples: int = 0
    evaluations: int = 0
    candidates: list[dict[str, float]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.new_ef != self.old_ef


def measure(graph: Graph, work: Workload, ef: int, latency_queries: int) -> Measurement:
    """Recall@k of every sampled query at `ef`, and latency percentiles over the first few, timed
    one by one (what a searcher sees)."""
    hits = np.zeros(len(work.ks))
    for k in np.unique(work.ks):
        rows = np.flatnonzero(work.ks == k)
        labels, _ = graph.knn(work.queries[rows], int(k), ef)
        for r, got in zip(rows, labels, strict=True):
            truth = work.exact[r, :k]
            truth = truth[truth >= 0]
            hits[r] = len(set(got.tolist()) & set(truth.tolist())) / max(len(truth), 1)
    times = []
    for n in range(min(latency_queries, len(work.ks))):
        started = time.perf_counter()
        graph.knn(work.queries[n:n + 1], int(work.ks[n]), ef)
        times.append((time.perf_counter() - started) * 1000)
    p50, p90, p95, p99 = (float(x) for x in (np.percentile(times, [50, 90, 95, 99]) if times else np.zeros(4)))
    sem = float(hits.std(ddof=1) / np.sqrt(len(hits))) if len(hits) > 1 else 0.0
    return Measurement(ef, float(hits.mean()), p50, p90, p95, p99, recall_sem=sem)


def choose_search(evaluate: Callable[[int], Measurement], current: int, *, target_recall: float,
                  target_latency_ms: float, lo: int, hi: int, max_evals: int,
                  margin: float, z: float = 0.0) -> tuple[int, str, str | None, dict[int, Measurement]]:
    """The cheapest ef meeting the recall target (plus margin, and with `z` standard errors of
    confidence: the samples are not the queries to come); see the module docstring."""
    goal = min(target_recall + margin, 1.0)
    seen: dict[int, Measurement] = {}

    def meets(ef: int) -> bool:
        if ef not in seen:
            seen[ef] = evaluate(ef)
        m = seen[ef]
        return m.recall - z * m.recall_sem >= goal or m.recall >= 1.0

    start = min(max(current, lo), hi)
    ok, bad = (start, None) if meets(start) else (None, start)
    while len(seen) < max_evals:
        if ok is None and bad is not None and bad < hi:
            e = min(hi, bad * 2)
            ok, bad = (e, bad) if meets(e) else (None, e)
        elif bad is None and ok is not None and ok > lo:
            e = max(lo, ok // 2)
            ok, bad = (e, None) if meets(e) else (ok, e)
        else:
            break
    while ok is not None and bad is not None and len(seen) < max_evals and ok - bad > max(1, round(0.05 * ok)):
        mid = (ok + bad) // 2
        if meets(mid):
            ok = mid
        else:
            bad = mid
    if ok is None:
        best = max(seen.values(), key=lambda m: (m.recall, -m.ef))
        return (best.ef, f"recall target {target_recall:.3f} not reached up to ef={max(seen)} "
                f"(best {best.recall:.3f}); favouring recall", "recall below target at every ef tried", seen)
    m = seen[ok]
    if m.p95_ms > target_latency_ms:
        return (ok, f"ef={ok} is the cheapest meeting recall {goal:.3f} but p95 {m.p95_ms:.2f} ms > "
                f"{target_latency_ms:g} ms; favouring recall", "latency SLO missed at the cheapest ef meeting recall",
                seen)
    if ok != current and current in seen and abs(ok - current) <= max(1, round(0.05 * current)) \
            and meets(current) and seen[current].p95_ms <= target_latency_ms:
        return current, "within 5% of the cheapest ef meeting both SLOs: kept", None, seen
    return (ok, f"cheapest ef meeting recall >= {goal:.3f} (at {z:g} standard errors) and p95 <= "
            f"{target_latency_ms:g} ms", None, seen)


def choose_step(evaluate: Callable[[int], Measurement], current: int, *, target_recall: float,
                target_latency_ms: float, lo: int, hi: int) -> tuple[int, str, str | None, dict[int, Measurement]]:
    """The step strategy: one measurement, x1.2 up / x0.8 down."""
    m = evaluate(current)
    seen = {current: m}
    low_recall, slow = m.recall < target_recall, m.p95_ms > target_latency_ms
    if low_recall and not slow:
        return min(hi, max(current + 1, math.ceil(current * 1.2))), "recall below target: x1.2", None, seen
    if slow and not low_recall:
        return max(lo, min(current - 1, math.floor(current * 0.8))), "latency above target: x0.8", None, seen
    if low_recall and slow:
        return current, "both SLOs missed: unchanged", "recall and latency both miss their targets", seen
    return current, "both SLOs met: unchanged", None, seen


# -- one tuning cycle for one index -------------------------------------------------------------
_EXACT_CACHE: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}


def ground_truth(st: IndexState, queries: np.ndarray, kmax: int) -> np.ndarray:
    """Exact neighbour ids (n, kmax) by brute force over the graph's live vectors (-1 padded)."""
    key = (st.name, st.seq)
    if key not in _EXACT_CACHE:
        _EXACT_CACHE.clear()
        ids = np.asarray(sorted(st.graph.live), dtype=np.int64)
        _EXACT_CACHE[key] = (ids, st.graph.vectors(ids.tolist()))
    ids, data = _EXACT_CACHE[key]
    pos, _ = exact_knn(st.space, data, normalise(st.space, queries), kmax)
    out = np.full((len(queries), kmax), -1, dtype=np.int64)
    out[:, :pos.shape[1]] = ids[pos]
    return out


def load_workload(client: Vectors, st: IndexState) -> tuple[Workload, list[dict[str, Any]]]:
    s = client.settings
    rows = client.rows("vec_recent_samples", {"name": st.name, "window_s": s.tuner_window_s,
                                              "limit": s.vectors_sample_size})
    if not rows:
        return Workload(np.zeros((0, st.dim), np.float32), np.zeros(0, np.int64), np.zeros((0, 0), np.int64)), rows
    queries = decode(b"".join(bytes(r["embedding"]) for r in rows), st.dim)
    ks = np.asarray([min(int(r["k"]), 100) for r in rows], dtype=np.int64)
    kmax = max(100, int(ks.max()))
    exact = np.full((len(rows), kmax), -1, dtype=np.int64)
    todo = []
    for n, r in enumerate(rows):
        if r["exact_ids"] is not None and r["exact_seq"] == st.seq and len(r["exact_ids"]) >= kmax:
            exact[n] = r["exact_ids"][:kmax]
        else:
            todo.append(n)
    if todo:
        with st.lock:
            exact[todo] = ground_truth(st, queries[todo], kmax)
    return Workload(queries, ks, exact), rows


def served_recall(client: Vectors, st: IndexState, work: Workload, rows: list[dict[str, Any]]) -> None:
    """Recall@10 of what each sampled query was served, and recall@100 at its ef; stored on the sample."""
    todo = [n for n, r in enumerate(rows) if r["evaluated_at"] is None]
    if not todo:
        return
    r10, r100 = [], []
    with st.lock:
        for n in todo:
            r = rows[n]
            got = list(r["result_ids"])[:10]
            truth = [i for i in work.exact[n, :min(10, int(work.ks[n]))] if i >= 0]
            r10.append(len(set(got) & set(truth)) / max(len(truth), 1))
            k100 = min(100, len(st.graph.live))
            labels, _ = st.graph.knn(work.queries[n:n + 1], k100, int(r["ef"]))
            truth100 = [i for i in work.exact[n, :k100] if i >= 0]
            r100.append(len(set(labels[0].tolist()) & set(truth100)) / max(len(truth100), 1))
    with client.pool.connection() as conn:
        conn.execute(q("vec_set_sample_recall"), {
            "seq": st.seq, "query_ids": [rows[n]["query_id"] for n in todo],
            "exact_ids": ["{" + ",".join(str(int(x)) for x in work.exact[n] if x >= 0) + "}" for n in todo],
            "r10": r10, "r100": r100})


def tune_index(client: Vectors, name: str, *, strategy: str | None = None, publish: bool = True) -> Decision:
    """One tuning cycle for `name`: measure, choose, publish, record."""
    s = client.settings
    st = client.state(name)
    info = client.info(name)
    strategy = strategy or info["tuner_strategy"] or s.tuner_strategy
    target_recall = float(info["target_recall"] or s.tuner_target_recall)
    target_latency = float(info["target_latency_ms"] or s.tuner_target_latency_ms)
    work, rows = load_workload(client, st)
    current = int(st.ef)
    if len(rows) < s.tuner_min_samples:
        return Decision(name, strategy, current, current, f"only {len(rows)} sampled queries "
                        f"(need {s.tuner_min_samples}): no decision", samples=len(rows))
    served_recall(client, st, work, rows)
    lo, hi = s.tuner_min_ef, max(s.tuner_max_ef, s.tuner_min_ef)

    def evaluate(ef: int) -> Measurement:
        with st.lock:
            return measure(st.graph, work, ef, s.tuner_latency_queries)

    if strategy == "step":
        new, reason, alert, seen = choose_step(evaluate, current, target_recall=target_recall,
                                               target_latency_ms=target_latency, lo=lo, hi=hi)
    else:
        new, reason, alert, seen = choose_search(evaluate, current, target_recall=target_recall,
                                                 target_latency_ms=target_latency, lo=lo, hi=hi,
                                                 max_evals=s.tuner_max_evaluations, margin=s.tuner_recall_margin,
                                                 z=s.tuner_recall_confidence_z)
    decision = Decision(name, strategy, current, new, reason, alert, before=seen.get(current), after=seen.get(new),
                        samples=len(rows), evaluations=len(seen),
                        candidates=[asdict(m) for _, m in sorted(seen.items())])
    if publish:
        record(client, decision, alpha=float(info["alpha"]), old_alert=info["alert"])
        with st.lock:
            st.ef = new
    return decision


def record(client: Vectors, d: Decision, *, alpha: float, old_alert: str | None) -> None:
    after, before = d.after, d.before
    with client.pool.connection() as conn, conn.transaction():
        if d.changed or d.alert != old_alert:
            conn.execute(q("vec_publish_params"), {"name": d.index, "ef": d.new_ef, "alpha": alpha, "alert": d.alert})
        conn.execute(q("vec_insert_decision"), {
            "index_name": d.index, "parameter": "ef", "strategy": d.strategy, "old_value": d.old_ef,
            "new_value": d.new_ef, "recall": after.recall if after else None,
            "recall_before": before.recall if before else None,
            "p50_ms": after.p50_ms if after else None, "p90_ms": after.p90_ms if after else None,
            "p95_ms": after.p95_ms if after else None, "p99_ms": after.p99_ms if after else None,
            "p95_before_ms": before.p95_ms if before else None, "samples": d.samples,
            "evaluations": d.evaluations, "candidates": Jsonb(d.candidates), "alert": d.alert is not None,
            "reason": d.reason})


def tune_alpha(client: Vectors, name: str, *, min_feedback: int = 5) -> dict[str, Any] | None:
    """Set the index's hybrid alpha to the value maximising NDCG@10 over recent feedback."""
    s = client.settings
    st = client.state(name)
    rows = client.rows("vec_feedback_queries", {"name": name, "window_s": s.tuner_window_s,
                                                "limit": s.vectors_sample_size})
    if len(rows) < min_feedback:
        return None
    pools = []
    for r in rows:
        vec = decode(bytes(r["embedding"]), st.dim)
        pools.append((candidates(client.pool, st, r["query_text"], vec, st.ef),
                      {int(i) for i in r["relevant_ids"]}))
    alpha, ndcg, ndcg_before, curve = best_alpha(pools, s.tuner_alpha_grid, float(st.alpha))
    info = client.info(name)
    with client.pool.connection() as conn, conn.transaction():
        if abs(alpha - float(st.alpha)) > 1e-9:
            conn.execute(q("vec_publish_params"), {"name": name, "ef": int(info["ef_search"]), "alpha": alpha,
                                                   "alert": info["alert"]})
        conn.execute(q("vec_insert_decision"), {
            "index_name": name, "parameter": "alpha", "strategy": "ndcg@10-grid", "old_value": float(st.alpha),
            "new_value": alpha, "recall": ndcg, "recall_before": ndcg_before, "p50_ms": None, "p90_ms": None,
            "p95_ms": None, "p99_ms": None, "p95_before_ms": None, "samples": len(rows), "evaluations": len(curve),
            "candidates": Jsonb(curve), "alert": False,
            "reason": f"alpha maximising mean NDCG@10 over {len(rows)} queries with feedback"})
    with st.lock:
        st.alpha = alpha
    return {"alpha": alpha, "ndcg": ndcg, "ndcg_before": ndcg_before, "queries": len(rows)}


def tune_all(client: Vectors) -> list[Decision]:
    """One cycle over every index with the tuner enabled."""
    out = []
    for info in client.indexes():
        if info["tuner_enabled"]:
            out.append(tune_index(client, info["name"]))
            tune_alpha(client, info["name"])
    return out
