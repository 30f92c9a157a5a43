"""Index maintenance: measure fragmentation, do cheap upkeep below the threshold, rebuild above
it (inside the maintenance window, or when forced), VACUUM (ANALYZE).

Fragmentation of an index = its tombstone ratio, deleted / (live + deleted) from the counters every
writer keeps (hnswlib `mark_deleted` slots not yet reused by an insert or rebuilt away; or this
process's graph's share if higher), plus the recall drift on a fixed probe set at the published
ef (exact neighbours by numpy) since the last rebuild. `--now` (force) rebuilds whatever they say.

A rebuild builds a fresh hnswlib graph beside the one serving searches, from one consistent
snapshot of the live rows, replays the writes that arrived meanwhile, then in ONE transaction
that holds the index row lock (writers wait): replays the last writes, replaces the snapshot and
bumps `graph_version`. This process swaps its in-memory graph; other searching processes see the
new graph_version on their next refresh (every `vectors_sync_s`), load the new snapshot beside
the old graph and swap one reference (`adopt()` does the same on demand). Until that transaction
commits nothing is changed, so a rebuild killed midway leaves
the old graph and snapshot serving; the next run marks the dead run abandoned and starts over.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from neuron_tasks import db
from neuron_tasks.sql import q
from neuron_tasks.vectors import store
from neuron_tasks.vectors.base import IndexState, decode
from neuron_tasks.vectors.client import Vectors
from neuron_tasks.vectors.defrag_settings import DefragSettings
from neuron_tasks.vectors.graph import MIN_CAPACITY, Graph, exact_knn, normalise

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


class RebuildRefused(Exception):
    pass


# -- the maintenance window ---------------------------------------------------------------------
def parse_window(text: str) -> tuple[dtime, dtime]:
    start, end = text.split("-")
    return dtime.fromisoformat(start), dtime.fromisoformat(end)


def in_window(now: datetime, window: str, tz: str) -> bool:
    start, end = parse_window(window)
    t = now.astimezone(ZoneInfo(tz)).time()
    return start <= t < end if start <= end else (t >= start or t < end)


def next_window(now: datetime, window: str, tz: str) -> datetime:
    """The next start of the window after `now` (now itself when inside it)."""
    if in_window(now, window, tz):
        return now
    start, _ = parse_window(window)
    local = now.astimezone(ZoneInfo(tz))
    cand = local.replace(hour=start.hour, minute=start.minute, second=0, microsecond=0)
    if cand <= local:
        cand += timedelta(days=1)
    return cand.astimezone(UTC)


# -- measuring ----------------------------------------------------------------------------------
@dataclass
class Measurement:
    index: str
    live: int
    deleted: int              # tombstones of the index (deletes not yet reused or rebuilt away)
    graph_tombstones: int     # tombstones in this process's graph
    elements: int
    tombstone_rows: int       # deleted rows in vector_items
    tombstone_ratio: float
    memory_ratio: float       # graph slots vs a fresh build's
    ef: int
    recall: float | None
    baseline_recall: float | None
    recall_drift: float | None
    in_window: bool
    next_window: datetime


def probe_queries(name: str, graph: Graph, n: int) -> np.ndarray:
    """A fixed probe set: random draws, the same for every run on an index (the generator starts
    from its name), around the live data (per-dimension mean and spread of up to 5,000 live
    vectors picked by the same generator)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    ids = sorted(graph.live)
    pick = sorted(rng.choice(len(ids), size=min(len(ids), 5000), replace=False).tolist())
    data = graph.vectors([ids[i] for i in pick])
    anchors = data[rng.integers(0, len(data), n)]
    return (anchors + rng.standard_normal((n, graph.dim)).astype(np.float32) * data.std(0) * 0.5).astype(np.float32)


def graph_recall(graph: Graph, queries: np.ndarray, k: int, ef: int) -> float:
    """Mean recall@k of hnswlib at `ef` against brute force over the live items (short results count
    as misses)."""
    ids = sorted(graph.live)
    k = min(k, len(ids))
    if k == 0:
        return 1.0
    order, _ = exact_knn(graph.space, graph.vectors(ids), normalise(graph.space, queries), k)
    exact = np.asarray(ids, dtype=np.int64)[order]
    graph.set_ef(max(ef, k))
    hits = 0
    for n, qv in enumerate(queries):
        try:
            labels, _ = graph.index.knn_query(qv.reshape(1, -1), k=k)
        except RuntimeError:  # fewer than k found: a short result
            continue
        hits += len(set(labels[0].tolist()) & set(exact[n].tolist()))
    return hits / (k * len(queries))


def measure(vectors: Vectors, name: str, settings: DefragSettings, *, now: datetime | None = None,
            baseline: bool = False) -> Measurement:
    """Measure an index in this process's graph and store it in neuron_tasks.index_maintenance
    (`baseline`, or the index's first measurement: this recall becomes the one drift is measured
    against)."""
    now = now or datetime.now(UTC)
    adopt(vectors, name)  # another process may have rebuilt the index since we loaded it
    st = vectors.state(name)
    with st.lock:
        g = st.graph
        live, graph_dead, elements = len(g.live), len(g.tombstones), g.elements
        recall = None
        if live:
            recall = graph_recall(g, probe_queries(name, g, settings.defrag_probe_queries), settings.defrag_probe_k,
                                  st.ef)
        memory_ratio = g.capacity / max(live + MIN_CAPACITY, MIN_CAPACITY)
        ef = st.ef
    # The index's counters, kept by every writer: a process that loaded without a snapshot holds
    # a fresh graph, but the snapshot and the other searchers' graphs carry the tombstones.
    info = vectors.info(name)
    dead = int(info["deleted_count"])
    ratio = dead / (int(info["live_count"]) + dead) if dead else 0.0
    tombstone_rows = int(vectors.rows("dfg_tombstone_rows", {"name": name})[0]["n"])
    # The first measurement of an index is its baseline until a rebuild sets a new one.
    baseline = baseline or not vectors.rows("dfg_maintenance", {"name": name})
    tombstone_ratio = max(ratio, graph_dead / elements if elements else 0.0)
    upcoming = next_window(now, settings.defrag_maintenance_window, settings.defrag_timezone)
    vectors.rows("dfg_save_measure", {
        "name": name, "live": live, "deleted": dead, "tombstone_rows": tombstone_rows,
        "tombstone_ratio": tombstone_ratio, "memory_ratio": memory_ratio, "ef": ef,
        "recall": recall, "baseline_recall": recall if baseline else None, "recall_drift": None,
        "next_window": upcoming})
    stored = vectors.rows("dfg_maintenance", {"name": name})[0]
    return Measurement(name, live, dead, graph_dead, elements, tombstone_rows, tombstone_ratio,
                       memory_ratio, ef, recall, stored["baseline_recall"], stored["recall_drift"],
                       in_window(now, settings.defrag_maintenance_window, settings.defrag_timezone), upcoming)


def fragmented(m: Measurement, settings: DefragSettings) -> bool:
    drift = m.recall_drift is not None and m.recall_drift >= settings.defrag_recall_drift_threshold
    return m.tombstone_ratio >= settings.defrag_fragmentation_threshold or drift


# -- cheap upkeep -------------------------------------------------------------------------------
def prune_tombstones(vectors: Vectors, name: str, settings: DefragSettings) -> int:
    """Save a snapshot (it carries the graph's tombstones), then delete the tombstone rows it covers
    that are older than the grace period. Returns rows deleted."""
    vectors.save(name)
    with vectors.pool.connection() as conn:
        cur = conn.execute(q("dfg_prune_tombstones"), {"name": name, "grace_s": settings.defrag_tombstone_grace_s})
        return int(cur.rowcount or 0)


def analyze_items(vectors: Vectors) -> None:
    """Refresh the planner statistics of the vector tables."""
    with vectors.pool.connection() as conn:
        conn.execute(q("dfg_analyze_items"))


# -- rebuild ------------------------------------------------------------------------------------
def rebuild(vectors: Vectors, name: str, settings: DefragSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Build a fresh graph beside the serving one, replay concurrent writes, publish it atomically."""
    report = progress or (lambda phase, done, total: None)
    info = vectors.info(name)
    dim, total, started = info["dim"], int(info["live_count"]), time.perf_counter()
    report("build", 0, total)
    with vectors.pool.connection() as conn, conn.transaction():
        store.repeatable_read(conn)
        p = store.published(conn, name)
        if p is None:
            raise RebuildRefused(f"index {name} was dropped during the rebuild")
        seq = int(p.data_seq)
        graph = Graph.new(info["space"], dim, info["m"], info["ef_construction"], capacity=total + MIN_CAPACITY)
        done = 0
        for batch in store.live_batches(conn, name, seq, settings.defrag_build_batch, label="defrag"):
            vecs = decode(b"".join(bytes(r.embedding) for r in batch), dim)
            graph.upsert([int(r.id) for r in batch], vecs, num_threads=vectors.settings.vectors_num_threads)
            done += len(batch)
            report("build", done, max(total, done))
    build_s = time.perf_counter() - started
    new = IndexState(name=name, space=info["space"], dim=dim, m=info["m"], ef_construction=info["ef_construction"],
                     text_config=info["text_config"], graph=graph, seq=seq, ef=info["ef_search"],
                     alpha=info["alpha"], params_version=info["params_version"], loaded_from="defrag")
    report("replay", done, total)
    replayed = vectors.refresh(new)
    report("swap", done, total)
    with vectors.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("dfg_lock_index"), {"name": name}).fetchone()  # writers wait from here
        if row is None:
            raise RebuildRefused(f"index {name} was dropped during the rebuild")
        replayed += vectors.refresh(new)
        g = new.graph
        cur.execute(q("dfg_replace_snapshot"), {
            "name": name, "seq": new.seq, "graph": g.to_bytes(), "live": len(g.live), "elements": g.elements,
            "capacity": g.capacity, "tombstones": g.tombstone_bytes()})
        published = cur.execute(q("dfg_publish_graph"), {"name": name, "deleted": len(g.tombstones)}).fetchone()
        if published is None:
            raise RebuildRefused(f"index {name} was dropped during the rebuild")
        version = published["graph_version"]
        new.changed_since_snapshot = 0
    swap(vectors, name, new, int(version))
    return {"rows": done, "replayed": replayed, "seq": new.seq, "graph_version": int(version),
            "build_s": round(build_s, 3), "total_s": round(time.perf_counter() - started, 3)}


def swap(vectors: Vectors, name: str, new: IndexState, version: int) -> None:
    """Make `new` this process's graph of `name` (searches already running finish on the old one)."""
    new.graph_version = version
    vectors.install(name, new, version)


def adopt(vectors: Vectors, name: str) -> bool:
    """In a searching process: if a rebuilt graph was published since the previous call,
    load it beside the old one (snapshot + replay) and swap. Returns True when swapped."""
    rows = vectors.rows("dfg_graph_version", {"name": name})
    if not rows:
        return False
    version = int(rows[0]["graph_version"])
    known = vectors.graph_versions.get(name)
    if known is None or known == version:
        # First call: the graph this process holds (or will load: the latest snapshot) counts as
        # current. Call adopt() once when the process starts searching, then every few seconds.
        vectors.graph_versions[name] = version
        return False
    swap(vectors, name, vectors.load(name), version)
    return True


# -- one maintenance run ------------------------------------------------------------------------
def defrag_index(vectors: Vectors, name: str, settings: DefragSettings | None = None, *, force: bool = False,
                 now: datetime | None = None, on_progress: Progress | None = None) -> dict[str, Any]:
    """Measure, then cheap upkeep, or a rebuild when fragmented and (inside the window or forced).
    Returns the run's report (also stored in neuron_tasks.defrag_runs)."""
    settings = settings or DefragSettings()
    now = now or datetime.now(UTC)
    with psycopg.connect(db.session_url(vectors.url), autocommit=True, row_factory=dict_row) as lock:

        def one(query: str, params: dict[str, Any]) -> dict[str, Any]:
            row = lock.execute(q(query), params).fetchone()
            if row is None:
                raise RuntimeError(f"{query} answered no row")
            return row

        if not one("dfg_try_lock", {"name": name})["ok"]:
            return {"index": name, "action": "busy", "reason": "another defrag of this index is running"}
        abandoned = lock.execute(q("dfg_abandon_runs"), {"name": name}).fetchall()
        run_id = one("dfg_start_run", {"name": name, "forced": force})["id"]

        def progress(phase: str, done: int, total: int) -> None:
            lock.execute(q("dfg_progress"), {"id": run_id, "phase": phase, "rows_done": done, "rows_total": total})
            if on_progress is not None:
                on_progress(phase, done, total)

        report: dict[str, Any] = {"index": name, "run_id": run_id, "forced": force,
                                  "abandoned_runs": [r["id"] for r in abandoned]}
        try:
            progress("measure", 0, 0)
            before = measure(vectors, name, settings, now=now)
            report["before"] = _jsonable(asdict(before))
            action = "rebuild" if force else "cheap"
            if not force and fragmented(before, settings):
                action = "rebuild" if before.in_window else "refused"
            report["action"] = action
            if action == "refused":
                report["reason"] = (f"fragmented (tombstone ratio {before.tombstone_ratio:.2f}) but outside the "
                                    f"maintenance window {settings.defrag_maintenance_window} "
                                    f"{settings.defrag_timezone}; next at {before.next_window.isoformat()}; "
                                    "force with `neuron-tasks index defrag NAME --now`")
            if action == "rebuild":
                report["rebuild"] = rebuild(vectors, name, settings, progress)
            progress("prune", 0, before.tombstone_rows)
            if action == "rebuild" or before.tombstone_rows >= settings.defrag_compact_threshold:
                report["pruned_rows"] = prune_tombstones(vectors, name, settings)
            else:
                report["pruned_rows"] = 0
            analyze_items(vectors)
            report["analyzed"] = ["vector_items"]
            after = measure(vectors, name, settings, now=now, baseline=action == "rebuild")
            report["after"] = _jsonable(asdict(after))
            vectors.rows("dfg_mark_maintained", {"name": name, "action": action})
            lock.execute(q("dfg_finish_run"), {"id": run_id, "phase": "done", "action": action,
                                               "report": Jsonb(report)})
        except BaseException as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
            lock.execute(q("dfg_finish_run"), {"id": run_id, "phase": "failed", "action": report.get("action"),
                                               "report": Jsonb(report)})
            raise
        finally:
            lock.execute(q("dfg_unlock"), {"name": name})
    return report


def vacuum(url: str, settings: DefragSettings) -> list[dict[str, Any]]:
    """VACUUM (ANALYZE) the neuron_tasks tables past the dead-tuple ratio; returns what was done."""
    done = []
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        for row in conn.execute(q("dfg_dead_tuples")).fetchall():
            ratio = row["dead_ratio"] or 0.0
            if ratio < settings.defrag_vacuum_dead_ratio or row["n_dead_tup"] < settings.defrag_vacuum_min_dead:
                continue
            started = time.perf_counter()
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}.{}").format(sql.Identifier("neuron_tasks"),
                                                                  sql.Identifier(row["table_name"])))
            done.append({"table": row["table_name"], "dead_tuples": row["n_dead_tup"], "dead_ratio": round(ratio, 3),
                         "seconds": round(time.perf_counter() - started, 3)})
    return done


def defrag_all(vectors: Vectors, settings: DefragSettings | None = None, *, force: bool = False) -> dict[str, Any]:
    """Every index, then VACUUM (ANALYZE) where needed."""
    settings = settings or DefragSettings()
    reports = []
    for info in vectors.indexes():
        try:
            reports.append(defrag_index(vectors, info["name"], settings, force=force))
        except Exception as exc:  # one broken index does not stop the others
            log.exception("defrag of %s failed", info["name"])
            reports.append({"index": info["name"], "action": "failed", "error": str(exc)})
    return {"indexes": reports, "vacuumed": vacuum(vectors.url, settings), "pid": os.getpid()}


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in d.items()}
