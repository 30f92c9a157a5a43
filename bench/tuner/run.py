"""bench/tuner: the ef auto-tuner against the oracle sweep, the original extension's step strategy and fixed defaults.

    python bench/tuner/run.py [--n 100000] [--dim 128] [--minilm 0] [--out bench/tuner/results.json]

Data the bench makes itself: clustered vectors (n x dim), and, when the local MiniLM model is
installed and --minilm N > 0, MiniLM embeddings of N generated sentences. A query stream whose
difficulty shifts halfway: phase A queries are data points plus a little noise (0.3), phase B
queries are data points plus more noise (1.5, the clusters' own spread being 1): their neighbours
are less separated, so the same recall needs a larger ef.

For each phase: the oracle sweeps every ef on a held-out evaluation set (recall@10 and
single-thread QPS of the ANN step) and takes the cheapest ef meeting recall 0.95. Each tuning
cycle sends `--per-cycle` searches through the real client (metrics and samples written to
PostgreSQL), then runs one tuner cycle; after each cycle the evaluation set is measured at the
published ef. Reported: cycles to reach the target, recall and QPS after convergence as a ratio
to the oracle (final and oracle ef measured alternately, median of 3, since the machine is
shared), ef evaluations per cycle, p95 at the tuned ef vs ef=100 (same), and the fixed defaults
(100: Qdrant's ef_construct / Weaviate's dynamic ef for k=10; 40: pgvector; 10: hnswlib).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from neuron_tasks import embedded  # noqa: E402
from neuron_tasks.core import migrate  # noqa: E402
from neuron_tasks.vectors import Vectors, VectorSettings  # noqa: E402
from neuron_tasks.vectors.graph import Graph, exact_knn  # noqa: E402
from neuron_tasks.vectors.tuner import Workload, measure, tune_index  # noqa: E402

SWEEP = [10, 12, 14, 16, 20, 24, 28, 32, 36, 40, 44, 48, 56, 64, 72, 80, 96, 112, 128, 160, 192, 256, 320, 400, 512,
         768, 1024]
TARGET = 0.95
K = 10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = (rng.normal(size=(clusters, dim)) * 2.0).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), centres


def queries(x: np.ndarray, centres: np.ndarray, n: int, phase: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dim = x.shape[1]
    if phase == "A":  # near the data
        return (x[rng.integers(0, len(x), n)] + rng.normal(size=(n, dim)) * 0.3).astype(np.float32)
    # phase B: further from the data (noise 1.5x the clusters' spread): neighbours are less separated
    return (x[rng.integers(0, len(x), n)] + rng.normal(size=(n, dim)) * 1.5).astype(np.float32)


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    subj = ["The worker", "A queue", "Our database", "The tuner", "An index", "The scheduler", "A tenant",
            "The broker", "My laptop", "The cluster", "A customer", "The model"]
    verb = ["processes", "rebuilds", "measures", "ignores", "retries", "stores", "ranks", "embeds", "deletes",
            "schedules", "compresses", "summarises"]
    obj = ["invoices", "vectors", "support tickets", "recipes", "sensor readings", "weather reports",
           "legal contracts", "song lyrics", "chess games", "log lines", "photos of cats", "train timetables"]
    tail = ["every night", "in batches", "after a failure", "before lunch", "for each tenant", "slowly",
            "on Postgres", "with a GPU", "twice a day", "when asked"]
    return [f"{subj[rng.integers(12)]} {verb[rng.integers(12)]} {obj[rng.integers(12)]} {tail[rng.integers(10)]} "
            f"(#{i})" for i in range(n)]


def oracle(graph: Graph, work: Workload) -> dict[str, Any]:
    rows = []
    for ef in SWEEP:
        m = measure(graph, work, ef, latency_queries=len(work.ks))
        qps = 1000.0 / max(np.mean([m.p50_ms]), 1e-9)
        rows.append({"ef": ef, "recall": m.recall, "p50_ms": m.p50_ms, "p95_ms": m.p95_ms, "qps": qps})
    best = next((r for r in rows if r["recall"] >= TARGET), rows[-1])
    return {"sweep": rows, "ef": best["ef"], "recall": best["recall"], "qps": best["qps"], "p95_ms": best["p95_ms"]}


def evaluate(graph: Graph, work: Workload, ef: int) -> dict[str, float]:
    started = time.perf_counter()
    m = measure(graph, work, ef, latency_queries=len(work.ks))
    return {"ef": ef, "recall": m.recall, "p50_ms": m.p50_ms, "p95_ms": m.p95_ms, "qps": 1000.0 / max(m.p50_ms, 1e-9),
            "wall_s": time.perf_counter() - started}


def paired_qps(graph: Graph, work: Workload, ef_a: int, ef_b: int, rounds: int = 3) -> tuple[float, float]:
    """QPS at two ef values measured alternately (the machine is shared: load moves between runs),
    median of `rounds` each."""
    a, b = [], []
    for _ in range(rounds):
        a.append(evaluate(graph, work, ef_a)["qps"])
        b.append(evaluate(graph, work, ef_b)["qps"])
    return float(np.median(a)), float(np.median(b))


def workload_of(x_ids: np.ndarray, x: np.ndarray, space: str, q: np.ndarray) -> Workload:
    pos, _ = exact_knn(space, x, q, K)
    return Workload(q, np.full(len(q), K), x_ids[pos])


def run_dataset(url: str, name: str, x: np.ndarray, phases: dict[str, np.ndarray], space: str, args: Any) -> dict:
    settings = VectorSettings(database_url=url, vectors_sample_rate=1.0, vectors_sync_s=0.0,
                              vectors_snapshot_every=0, vectors_num_threads=1, tuner_latency_queries=200,
                              vectors_sample_size=args.per_cycle * 2, tuner_target_latency_ms=args.target_latency_ms,
                              **({} if args.recall_margin is None else {"tuner_recall_margin": args.recall_margin}))
    v = Vectors(url, settings=settings)
    if any(i["name"] == name for i in v.indexes()):
        v.drop_index(name)
    v.create_index(name, dim=x.shape[1], space=space, m=16, ef_construction=args.ef_construction, ef_search=10)
    started = time.perf_counter()
    for s in range(0, len(x), 10_000):
        v.add(name, range(s, min(len(x), s + 10_000)), x[s:s + 10_000])
    build_s = time.perf_counter() - started
    snap = v.save(name)
    log(f"{name}: {len(x)} x {x.shape[1]} stored and indexed in {build_s:.1f}s; snapshot {snap['bytes'] / 1e6:.0f} MB")
    st = v.state(name)
    graph = st.graph
    ids = np.arange(len(x), dtype=np.int64)
    data = x if space != "cosine" else x / np.linalg.norm(x, axis=1, keepdims=True)
    out: dict[str, Any] = {"n": len(x), "dim": x.shape[1], "space": space, "build_s": build_s, "phases": {}}
    evals = {}
    for phase, stream in phases.items():
        evals[phase] = workload_of(ids, data, space, stream[-args.eval:])
        o = oracle(graph, evals[phase])
        fixed = {str(ef): evaluate(graph, evals[phase], ef) for ef in (100, 40, 10)}
        out["phases"][phase] = {"oracle": o, "fixed": fixed}
        log(f"{name} phase {phase}: oracle ef={o['ef']} recall={o['recall']:.3f} qps={o['qps']:.0f}; "
            + "; ".join(f"ef={k}: recall {f['recall']:.3f}" for k, f in fixed.items()))
    for strategy, cycles in (("search", args.cycles), ("step", args.step_cycles)):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE neuron_tasks.vector_indexes SET ef_search = 10 WHERE name = %s", (name,))
            conn.execute("DELETE FROM neuron_tasks.vector_query_samples WHERE index_name = %s", (name,))
        v.refresh(st)
        for phase, stream in phases.items():
            trace = []
            feed = stream[:-args.eval]
            for c in range(cycles):
                chunk = feed[(c * args.per_cycle) % len(feed):][:args.per_cycle]
                for qv in chunk:
                    v.search(name, qv, k=K)
                v.flush_metrics()
                t0 = time.perf_counter()
                d = tune_index(v, name, strategy=strategy)
                tune_s = time.perf_counter() - t0
                e = evaluate(graph, evals[phase], d.new_ef)
                trace.append({"cycle": c + 1, "ef": d.new_ef, "recall": e["recall"], "qps": e["qps"],
                              "p95_ms": e["p95_ms"], "evaluations": d.evaluations, "tune_s": tune_s,
                              "alert": d.alert})
                log(f"{name} {strategy} phase {phase} cycle {c + 1}: ef {d.old_ef}->{d.new_ef} recall "
                    f"{e['recall']:.3f} qps {e['qps']:.0f} ({d.evaluations} evals, {tune_s:.1f}s)")
            o = out["phases"][phase]["oracle"]
            reached = next((t["cycle"] for t in trace if t["recall"] >= TARGET), None)
            last = trace[-1]
            qps_final, qps_oracle = paired_qps(graph, evals[phase], last["ef"], o["ef"])
            _, qps_100 = paired_qps(graph, evals[phase], last["ef"], 100)
            p95_final = float(np.median([evaluate(graph, evals[phase], last["ef"])["p95_ms"] for _ in range(3)]))
            p95_100 = float(np.median([evaluate(graph, evals[phase], 100)["p95_ms"] for _ in range(3)]))
            out["phases"][phase][strategy] = {
                "trace": trace, "cycles_to_target": reached, "final_ef": last["ef"], "final_recall": last["recall"],
                "qps_final": qps_final, "qps_oracle_paired": qps_oracle, "qps_ratio_vs_oracle": qps_final / qps_oracle,
                "qps_ratio_vs_ef100": qps_final / qps_100,
                "max_evaluations": max(t["evaluations"] for t in trace), "p95_ms": p95_final, "p95_ef100_ms": p95_100,
                "p95_vs_ef100": p95_final / p95_100}
    v.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--per-cycle", type=int, default=500, help="searches between two tuner cycles")
    ap.add_argument("--eval", type=int, default=500, help="held-out evaluation queries per phase")
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--step-cycles", type=int, default=6)
    ap.add_argument("--minilm", type=int, default=0, help="also MiniLM embeddings of N generated sentences")
    ap.add_argument("--target-latency-ms", type=float, default=10.0)
    ap.add_argument("--recall-margin", type=float, default=None,
                    help="the tuner's tuner_recall_margin (default: the setting's, 0.01)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "tuner" / "results.json")
    args = ap.parse_args()
    url = os.environ.get("NEURON_TASKS_DATABASE_URL") or embedded.start(None)
    migrate.upgrade(url)
    started = time.perf_counter()
    n_q = args.per_cycle * max(args.cycles, args.step_cycles) + args.eval
    x, centres = clustered(args.n, args.dim)
    results = {"clustered": run_dataset(url, "bench_clustered", x, {
        "A": queries(x, centres, n_q, "A", 1), "B": queries(x, centres, n_q, "B", 2)}, "l2", args)}
    if args.minilm:
        try:
            from neuron_tasks.llm.local import load_model

            model = load_model(threads=2)
        except Exception as exc:
            log(f"MiniLM skipped: {exc}")
        else:
            n_m = args.eval + 1000  # a shorter stream (encoding is slow on 2 cores); cycles wrap around it
            texts = sentences(args.minilm + 2 * n_m)
            t0 = time.perf_counter()
            emb = model.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
            log(f"MiniLM: {len(texts)} sentences embedded in {time.perf_counter() - t0:.0f}s")
            corpus, qa, qb = emb[:args.minilm], emb[args.minilm:args.minilm + n_m], emb[args.minilm + n_m:]
            qb = qb + np.random.default_rng(3).normal(size=qb.shape).astype(np.float32) * 0.05  # harder: perturbed
            results["minilm"] = run_dataset(url, "bench_minilm", corpus.astype(np.float32),
                                            {"A": qa.astype(np.float32), "B": qb.astype(np.float32)}, "cosine", args)
    results["wall_s"] = time.perf_counter() - started
    args.out.write_text(json.dumps(results, indent=1))
    log(f"done in {results['wall_s']:.0f}s; results in {args.out}")
    for ds, r in results.items():
        if not isinstance(r, dict):
            continue
        for phase, p in r["phases"].items():
            o = p["oracle"]
            print(f"{ds} {phase}: oracle ef={o['ef']} recall={o['recall']:.3f} qps={o['qps']:.0f} | "
                  + " | ".join(f"{s}: cycles={p[s]['cycles_to_target']} ef={p[s]['final_ef']} "
                               f"recall={p[s]['final_recall']:.3f} qps x{p[s]['qps_ratio_vs_oracle']:.2f} "
                               f"evals<={p[s]['max_evaluations']} p95/ef100={p[s]['p95_vs_ef100']:.2f}"
                               for s in ("search", "step"))
                  + " | " + " ".join(f"ef{k}: {f['recall']:.3f}/{f['qps']:.0f}qps" for k, f in p["fixed"].items()))


if __name__ == "__main__":
    main()
