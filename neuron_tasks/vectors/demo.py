"""The `neuron-tasks demo` phase for vectors: build an index, run a search workload, let the
tuner move ef, and show recall and latency before and after."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from rich.table import Table

from neuron_tasks.vectors.client import Vectors
from neuron_tasks.vectors.settings import VectorSettings
from neuron_tasks.vectors.tuner import tune_index

INDEX = "demo_vectors"


def clustered(n: int, dim: int, rng_seed: int = 0, clusters: int = 50) -> np.ndarray:
    rng = np.random.default_rng(rng_seed)
    centres = rng.normal(size=(clusters, dim)) * 3
    return (centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def workload(v: Vectors, x: np.ndarray, n: int, rng_seed: int) -> None:
    rng = np.random.default_rng(rng_seed)
    for i in rng.integers(0, len(x), n):
        v.search(INDEX, x[i] + rng.normal(size=int(x.shape[1])).astype(np.float32) * 0.5, k=10)
    v.flush_metrics()


def latency_by_ef(v: Vectors) -> dict[int, dict[str, Any]]:
    rows = v.rows("vec_demo_latency", {"name": INDEX})
    return {int(r["ef"]): r for r in rows}


def run_demo(url: str, console: Any) -> bool:
    settings = VectorSettings(database_url=url, vectors_sample_rate=1.0, vectors_sync_s=0.2, tuner_min_samples=20,
                              tuner_latency_queries=100)
    v = Vectors(url, settings=settings)
    searcher = Vectors(url, settings=settings)  # another "process" searching the same index
    try:
        if any(i["name"] == INDEX for i in v.indexes()):
            v.drop_index(INDEX)
        n, dim = 20_000, 64
        x = clustered(n, dim)
        started = time.perf_counter()
        v.create_index(INDEX, dim=dim, space="l2", m=8, ef_construction=64, ef_search=10)
        for s in range(0, n, 5000):
            v.add(INDEX, range(s, min(n, s + 5000)), x[s:s + 5000])
        snap = v.save(INDEX)
        console.print(f"built index {INDEX}: {n} clustered vectors x {dim} (M=8), stored in PostgreSQL, graph "
                      f"snapshot {snap['bytes'] / 1e6:.1f} MB, in {time.perf_counter() - started:.1f}s; ef_search "
                      "starts at hnswlib's default 10")
        workload(searcher, x, 300, rng_seed=1)
        console.print("ran 300 searches at ef=10 (every query sampled for recall measurement)")
        d = tune_index(v, INDEX)
        console.print(f"tuner: ef {d.old_ef} -> {d.new_ef} ({d.reason}); measured {d.evaluations} ef values on "
                      f"{d.samples} sampled queries against brute-force neighbours")
        published = time.monotonic()
        while searcher.search(INDEX, x[0], k=10, record=False).ef != d.new_ef and time.monotonic() - published < 5:
            time.sleep(0.05)
        console.print(f"the searching client applied ef={d.new_ef} {time.monotonic() - published:.2f}s after publish")
        workload(searcher, x, 300, rng_seed=2)
        d2 = tune_index(v, INDEX)  # measures the recall the new searches were served with
        stats = v.stats(INDEX, window_s=3600)[0]
        lat = latency_by_ef(v)
        table = Table(title="Tuner: before and after")
        for col in ("", "ef", "recall@10 (tuner's measure)", "recall@10 (served)", "p50 ms (served)",
                    "p95 ms (served)", "searches"):
            table.add_column(col)
        b, a = d.before, d.after
        for label, ef, m in (("before", d.old_ef, b), ("after", d.new_ef, a)):
            served = lat.get(ef, {})
            table.add_row(label, str(ef), f"{m.recall:.3f}" if m else "-",
                          f"{served.get('recall_at_10') or 0:.3f}", f"{served.get('p50_ms') or 0:.3f}",
                          f"{served.get('p95_ms') or 0:.3f}", str(served.get("queries", 0)))
        console.print(table)
        console.print(f"index stats (last hour): {stats['queries']} searches, p95 {stats['p95_ms'] or 0:.3f} ms, "
                      f"recall@10 {stats['recall_at_10'] or 0:.3f}, recall@100 {stats['recall_at_100'] or 0:.3f}; "
                      f"next tuner cycle: ef {d2.old_ef} -> {d2.new_ef}")
        console.print(f"try: neuron-tasks index stats {INDEX}    neuron-tasks index search {INDEX} --vector "
                      "'[...]'    neuron-tasks scheduler (runs the tuner every 60 s)")
        return a is not None and a.recall >= settings.tuner_target_recall
    finally:
        searcher.close()
        v.close()
