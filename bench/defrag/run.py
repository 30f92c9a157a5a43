"""bench/defrag: churn an index, then defrag it, against a fresh build of the same live set.

    python bench/defrag/run.py --url postgresql://postgres@127.0.0.1:5432/postgres [--n 100000] [--dim 32]

Per churn level (delete X% and insert X% new): recall@10 at a fixed ef, QPS (hnswlib, one
thread, one query at a time) and graph size (save_index bytes) before churn, after churn, after
`defrag --now`, and for a fresh build of the same live set; during the rebuild (run in another
process) a client of this process searches: failures, short results, p95 vs the baseline p95;
rebuild time vs a bare hnswlib build of the same rows. Drops its index at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from neuron_tasks.vectors import Vectors, VectorSettings
from neuron_tasks.vectors.defrag import adopt, graph_recall
from neuron_tasks.vectors.graph import Graph

NAME = "bench_defrag"
CHILD = """
import sys
from neuron_tasks.vectors import Vectors, VectorSettings
from neuron_tasks.vectors.defrag import defrag_index
from neuron_tasks.vectors.defrag_settings import DefragSettings
import json
url = sys.argv[1]
v = Vectors(url, settings=VectorSettings(database_url=url))
r = defrag_index(v, sys.argv[2], DefragSettings(database_url=url, defrag_tombstone_grace_s=0), force=True)
print(json.dumps(r["rebuild"]))
"""


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    return (centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, dim))).astype(np.float32)


def snapshot_of(graph: Graph, queries: np.ndarray, k: int, ef: int) -> dict[str, Any]:
    recall = graph_recall(graph, queries, k, ef)
    graph.set_ef(ef)
    short, started = 0, time.perf_counter()
    for qv in queries:
        try:
            labels, _ = graph.index.knn_query(qv.reshape(1, -1), k=k)
            short += labels.shape[1] < k
        except RuntimeError:
            short += 1
    qps = len(queries) / (time.perf_counter() - started)
    return {"recall": round(recall, 4), "qps": round(qps), "bytes": len(graph.to_bytes()),
            "elements": graph.elements, "tombstones": len(graph.tombstones), "short": short}


def latencies(v: Vectors, queries: np.ndarray, k: int, seconds: float | None = None,
              until: subprocess.Popen[str] | None = None) -> tuple[list[float], int, int]:
    lat, failed, short, n = [], 0, 0, 0
    started = time.perf_counter()
    while (until is not None and until.poll() is None) or (seconds is not None and time.perf_counter() - started
                                                          < seconds):
        t = time.perf_counter()
        try:
            res = v.search(NAME, queries[n % len(queries)], k=k, record=False)
            short += len(res.ids) < k
        except Exception:
            failed += 1
        lat.append((time.perf_counter() - t) * 1000)
        n += 1
    return lat, failed, short


def one(url: str, n: int, dim: int, churn: float, k: int, ef: int, m: int, efc: int) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(100, dim)) * 3
    x = clustered(n, dim, rng, centres)
    queries = clustered(1000, dim, rng, centres)
    vs = VectorSettings(database_url=url, vectors_sample_rate=0.0, vectors_sync_s=0.2, vectors_snapshot_every=0)
    v, searcher = Vectors(url, settings=vs), Vectors(url, settings=vs)
    try:
        if any(i["name"] == NAME for i in v.indexes()):
            v.drop_index(NAME)
        v.create_index(NAME, dim=dim, space="l2", m=m, ef_construction=efc, ef_search=ef)
        for s in range(0, n, 10_000):
            v.add(NAME, range(s, min(n, s + 10_000)), x[s:s + 10_000])
        v.save(NAME)
        out: dict[str, Any] = {"n": n, "dim": dim, "churn": churn, "ef": ef, "m": m, "ef_construction": efc}
        out["before"] = snapshot_of(v.state(NAME).graph, queries, k, ef)
        gone = rng.choice(n, size=int(n * churn), replace=False)
        new = clustered(len(gone), dim, rng, centres)
        for s in range(0, len(gone), 10_000):
            v.delete(NAME, gone[s:s + 10_000].tolist())
        for s in range(0, len(gone), 10_000):
            v.add(NAME, range(n + s, n + min(len(gone), s + 10_000)), new[s:s + 10_000])
        v.save(NAME)
        out["after_churn"] = snapshot_of(v.state(NAME).graph, queries, k, ef)
        searcher.state(NAME)
        adopt(searcher, NAME)
        base, _, _ = latencies(searcher, queries, k, seconds=3.0)
        proc = subprocess.Popen([sys.executable, "-c", CHILD, url, NAME], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "NEURON_TASKS_DATABASE_URL": url})
        during, failed, short = latencies(searcher, queries, k, until=proc)
        rebuild = json.loads(proc.communicate()[0])
        adopt(searcher, NAME)
        after_lat, failed2, short2 = latencies(searcher, queries, k, seconds=2.0)
        out["after_defrag"] = snapshot_of(searcher.state(NAME).graph, queries, k, ef)
        st = searcher.state(NAME)
        ids = sorted(st.graph.live)
        vecs = st.graph.vectors(ids)
        started = time.perf_counter()
        fresh = Graph.new("l2", dim, m, efc, capacity=len(ids) + 1024)
        fresh.upsert(ids, vecs)
        bare_s = time.perf_counter() - started
        out["fresh"] = snapshot_of(fresh, queries, k, ef)
        p95 = lambda a: float(np.percentile(a, 95)) if a else 0.0  # noqa: E731
        out["during_rebuild"] = {"searches": len(during), "failed": failed + failed2, "short": short + short2,
                                 "p95_ms": round(p95(during), 3), "baseline_p95_ms": round(p95(base), 3),
                                 "p95_ratio": round(p95(during) / p95(base), 2) if base else None,
                                 "after_searches": len(after_lat)}
        out["rebuild"] = {**rebuild, "bare_hnswlib_build_s": round(bare_s, 3),
                          "build_ratio": round(rebuild["build_s"] / bare_s, 2),
                          "total_ratio": round(rebuild["total_s"] / bare_s, 2)}
        a, f = out["after_defrag"], out["fresh"]
        out["vs_fresh"] = {"recall_diff": round(a["recall"] - f["recall"], 4),
                           "qps_ratio": round(a["qps"] / f["qps"], 3),
                           "bytes_ratio": round(a["bytes"] / f["bytes"], 3),
                           "recall_drift_avoided": round(a["recall"] - out["after_churn"]["recall"], 4)}
        return out
    finally:
        v.drop_index(NAME)
        v.close()
        searcher.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("NEURON_TASKS_DATABASE_URL"))
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--churn", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--ef", type=int, default=40)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=100)
    p.add_argument("--k", type=int, default=10)
    a = p.parse_args()
    if not a.url:
        sys.exit("--url or NEURON_TASKS_DATABASE_URL is required")
    for churn in a.churn:
        print(json.dumps(one(a.url, a.n, a.dim, churn, a.k, a.ef, a.m, a.ef_construction)), flush=True)


if __name__ == "__main__":
    main()
