"""`Vectors`: named HNSW indexes whose vectors live in PostgreSQL.

Writes go to PostgreSQL first (one transaction per batch, serialised per index by a row lock
that also hands out the index's data sequence); every process that searches keeps the graph in
memory and replays the rows changed since the sequence it has applied. A process loads the
latest graph snapshot instead of rebuilding, then replays the changes after it. Searchers
re-read the published ef/alpha (and replay writes) at most every `vectors_sync_s`, so a new
ef reaches every searching process within a second.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from neuron_tasks import db
from neuron_tasks.errors import NeuronTasksError
from neuron_tasks.sql import q
from neuron_tasks.vectors import store
from neuron_tasks.vectors.base import Hit, IndexState, SearchResult, UnknownIndex, decode, encode
from neuron_tasks.vectors.graph import Graph, as_matrix, normalise
from neuron_tasks.vectors.hybrid import POOL, candidates, rank
from neuron_tasks.vectors.metrics import MetricsRecorder, QueryRecord
from neuron_tasks.vectors.settings import VectorSettings
from neuron_tasks.vectors.store import SPACES, delete_items, write_items

# The pieces shared with other modules (base.py, store.py) can be imported from here too.
__all__ = ["SPACES", "Hit", "IndexState", "SearchResult", "UnknownIndex", "Vectors", "decode", "delete_items",
           "encode", "write_items"]

log = logging.getLogger(__name__)


class Vectors:
    """The vector-index API of one process. Thread-safe; share one per process."""

    def __init__(self, url: str | None = None, *, settings: VectorSettings | None = None,
                 pool: ConnectionPool | None = None) -> None:
        self.settings = settings or VectorSettings()
        self._url = url or self.settings.database_url
        self._pool = pool
        self._own_pool = pool is None
        self._read_pool: ConnectionPool | None = None
        self._lock = threading.RLock()
        self._states: dict[str, IndexState] = {}
        self._recorder: MetricsRecorder | None = None
        #: The graph version this process serves per index, as last adopted (defrag.adopt).
        self.graph_versions: dict[str, int] = {}
        #: The settings before runtime values (`neuron-tasks config set`) were laid over them.
        self.base_settings: VectorSettings | None = None

    # -- plumbing -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The database URL (the embedded server's when none is configured)."""
        if self._url is None:
            from neuron_tasks.config import Settings

            self._url = db.resolve_url(Settings())
        return self._url

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = db.make_pool(self.url, max_size=4, name="neuron_tasks-vectors")
        return self._pool

    @property
    def recorder(self) -> MetricsRecorder:
        if self._recorder is None:
            with self._lock:
                if self._recorder is None:
                    rec = MetricsRecorder(lambda: self.pool, self.settings.vectors_metrics_flush_s)
                    rec.start()
                    self._recorder = rec
        return self._recorder

    @property
    def read_pool(self) -> ConnectionPool:
        """Searches' reads (filters, item details): a replica's pool when NEURON_TASKS_READ_URL is set."""
        if self._read_pool is None:
            with self._lock:
                if self._read_pool is None:
                    from neuron_tasks.config import Settings

                    self._read_pool = db.make_read_pool(Settings(), self.pool, name="neuron_tasks-vectors")
        return self._read_pool

    def read_rows(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """`rows`, on the read pool (searches tolerate a replica's lag)."""
        with self.read_pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(q(name), params)
            return cur.fetchall() if cur.description else []

    def rows(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Run the named query on this client's pool; its rows by column name (none for a
        statement that returns none)."""
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(q(name), params)
            return cur.fetchall() if cur.description else []

    def follow_runtime_settings(self) -> None:
        """Lay the runtime settings (`neuron-tasks config set`) over the settings this client
        started with (the tuner does it at every cycle)."""
        from neuron_tasks.core.runtime import overlay

        if self.base_settings is None:
            self.base_settings = self.settings
        self.settings = overlay(self.base_settings, self.url)

    def flush_metrics(self, timeout: float = 10.0) -> bool:
        return self._recorder.flush(timeout) if self._recorder is not None else True

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.stop()
            self._recorder = None
        if self._read_pool is not None and self._read_pool is not self._pool:
            self._read_pool.close()
        self._read_pool = None
        if self._own_pool and self._pool is not None:
            self._pool.close()
            self._pool = None
        self._states.clear()

    def forget(self, name: str | None = None) -> None:
        """Drop this process's in-memory graph(s); the next use loads again."""
        with self._lock:
            if name is None:
                self._states.clear()
            else:
                self._states.pop(name, None)

    def install(self, name: str, st: IndexState, graph_version: int | None = None) -> None:
        """Make `st` this process's graph of `name` (searches already running finish on the old
        one); `graph_version`: the published version it is, when known."""
        with self._lock:
            self._states[name] = st
            if graph_version is not None:
                self.graph_versions[name] = graph_version

    # -- registry -----------------------------------------------------------------------------
    def create_index(self, name: str, dim: int, *, space: str = "cosine", m: int | None = None,
                     ef_construction: int | None = None, ef_search: int | None = None,
                     text_config: str = "english") -> dict[str, Any]:
        with self.pool.connection() as conn:
            return store.create_index(conn, name, dim, space=space, m=m, ef_construction=ef_construction,
                                      ef_search=ef_search, text_config=text_config, settings=self.settings)

    def drop_index(self, name: str) -> bool:
        self.forget(name)
        with self.pool.connection() as conn:
            return store.drop_index(conn, name)

    def indexes(self) -> list[dict[str, Any]]:
        return self.rows("vec_list_indexes", {})

    def info(self, name: str) -> dict[str, Any]:
        rows = self.rows("vec_get_index", {"name": name})
        if not rows:
            raise UnknownIndex(name)
        return rows[0]

    # -- loading and syncing ------------------------------------------------------------------
    def state(self, name: str, *, sync: bool = True) -> IndexState:
        """This process's graph of `name`, loaded on first use and kept in step with PostgreSQL."""
        st = self._states.get(name)
        if st is None:
            with self._lock:
                st = self._states.get(name)
                if st is None:
                    st = self.load(name)
                    self._states[name] = st
        if sync and time.monotonic() - st.checked_at >= self.settings.vectors_sync_s:
            self.refresh(st)
        return st

    def load(self, name: str) -> IndexState:
        """Load the graph of `name` afresh (latest snapshot, or a rebuild from the rows, then the
        changes after it), without making it this process's graph (see `install`)."""
        info = self.info(name)
        snap = self.rows("vec_load_snapshot", {"name": name})
        started = time.perf_counter()
        if snap:
            s = snap[0]
            tomb = np.frombuffer(bytes(s["tombstones"]), dtype="<i8").tolist()
            graph = Graph.from_bytes(info["space"], info["dim"], bytes(s["graph"]), int(s["capacity"]), tomb)
            seq, source = int(s["seq"]), "snapshot"
        else:
            graph, seq = self._rebuild(info)
            source = "rebuild"
        st = IndexState(name=name, space=info["space"], dim=info["dim"], m=info["m"],
                        ef_construction=info["ef_construction"], text_config=info["text_config"], graph=graph,
                        seq=seq, ef=info["ef_search"], alpha=info["alpha"], params_version=info["params_version"],
                        loaded_from=source)
        replayed = self.refresh(st)
        st.graph_version = int(info.get("graph_version") or 0)
        log.info("index %s: %s at seq %d in %.2fs, replayed %d changes", name, source, seq,
                 time.perf_counter() - started, replayed)
        if source == "rebuild" and graph.live:
            self.save(name, st)
        return st

    def _rebuild(self, info: dict[str, Any]) -> tuple[Graph, int]:
        """Build the graph from every live row (one consistent snapshot of the table)."""
        name, dim = info["name"], info["dim"]
        with self.pool.connection() as conn, conn.transaction():
            store.repeatable_read(conn)
            p = store.published(conn, name)
            seq = int(p.data_seq) if p else 0
            graph = Graph.new(info["space"], dim, info["m"], info["ef_construction"],
                              capacity=int(info["live_count"]) + 1024)
            for batch in store.live_batches(conn, name, seq, 5000, label="rebuild"):
                ids = [int(r.id) for r in batch]
                vecs = decode(b"".join(bytes(r.embedding) for r in batch), dim)
                graph.upsert(ids, vecs, num_threads=self.settings.vectors_num_threads)
        return graph, seq

    def refresh(self, st: IndexState) -> int:
        """Re-read published parameters; replay rows changed since our sequence. Returns rows replayed."""
        with self.pool.connection() as conn:
            p = store.published(conn, st.name)
        if p is None:
            self.forget(st.name)
            raise UnknownIndex(st.name)
        published = int(p.graph_version or 0)
        if st.graph_version is not None and published != st.graph_version:
            # Defrag published a rebuilt graph: load it (snapshot + replay) beside the one serving
            # searches, then swap; searches already running finish on the old graph.
            self.install(st.name, self.load(st.name))
            return 0
        replayed = 0
        with st.lock:
            st.ef, st.alpha, st.params_version = int(p.ef_search), float(p.alpha), int(p.params_version)
            if int(p.data_seq) > st.seq:
                replayed = self._replay(st)
            st.checked_at = time.monotonic()
        return replayed

    def _replay(self, st: IndexState) -> int:
        rows = self.rows("vec_changes_since", {"name": st.name, "seq": st.seq, "upto": 2**62})
        if not rows:
            return 0
        dead = [int(r["id"]) for r in rows if r["deleted"]]
        live = [r for r in rows if not r["deleted"]]
        # Final state per row: deletes and upserts touch disjoint ids.
        st.graph.delete(dead)
        if live:
            vecs = decode(b"".join(bytes(r["embedding"]) for r in live), st.dim)
            st.graph.upsert([int(r["id"]) for r in live], vecs, num_threads=self.settings.vectors_num_threads)
        st.seq = max(st.seq, max(int(r["seq"]) for r in rows))
        st.changed_since_snapshot += len(rows)
        return len(rows)

    def save(self, name: str, st: IndexState | None = None) -> dict[str, Any]:
        """Persist this process's graph as the index's snapshot (kept only if newer)."""
        st = st or self.state(name)
        with st.lock:
            data, seq = st.graph.to_bytes(), st.seq
            params = {"name": name, "seq": seq, "graph": data, "live": len(st.graph.live),
                      "elements": st.graph.elements, "capacity": st.graph.capacity,
                      "tombstones": st.graph.tombstone_bytes()}
            st.changed_since_snapshot = 0
        with self.pool.connection() as conn:
            conn.execute(q("vec_save_snapshot"), params)
        return {"seq": seq, "bytes": len(data), "live": params["live"], "elements": params["elements"]}

    # -- writes -------------------------------------------------------------------------------
    def add(self, name: str, ids: Sequence[int], vectors: Any, *,
            metadata: Sequence[dict[str, Any] | None] | None = None, texts: Sequence[str | None] | None = None) -> int:
        """Insert or replace items (upsert); returns the data sequence of this write."""
        st = self.state(name, sync=False)
        ids = [int(i) for i in ids]
        mat = as_matrix(vectors, st.dim)
        if len(ids) != len(mat):
            raise ValueError(f"{len(ids)} ids but {len(mat)} vectors")
        if any(i < 0 for i in ids):
            raise ValueError("ids must be non-negative integers")
        metas = list(metadata) if metadata is not None else [None] * len(ids)
        bodies = list(texts) if texts is not None else [None] * len(ids)
        if len(metas) != len(ids) or len(bodies) != len(ids):
            raise ValueError("metadata and texts must have one entry per id")
        with self.pool.connection() as conn, conn.transaction():
            seq = write_items(conn, name, ids, mat, metas, bodies)
        self._apply_own(st, seq, lambda: st.graph.upsert(ids, mat, num_threads=self.settings.vectors_num_threads),
                        len(ids))
        return seq

    upsert = add

    def delete(self, name: str, ids: Sequence[int]) -> int:
        """Delete items (tombstones in PostgreSQL, mark_deleted in every graph); returns how many were live."""
        st = self.state(name, sync=False)
        ids = [int(i) for i in ids]
        with self.pool.connection() as conn, conn.transaction():
            seq, gone = delete_items(conn, name, ids)
        self._apply_own(st, seq, lambda: st.graph.delete(gone), len(gone))
        return len(gone)

    def _apply_own(self, st: IndexState, seq: int, apply: Any, changed: int) -> None:
        with st.lock:
            if st.seq == seq - 1:
                apply()
                st.seq = seq
                st.changed_since_snapshot += changed
            else:
                self._replay(st)
        every = self.settings.vectors_snapshot_every
        if every and st.changed_since_snapshot >= every:
            self.save(st.name, st)

    # -- search -------------------------------------------------------------------------------
    def query_vector(self, st: IndexState, query: Any) -> tuple[np.ndarray, str | None]:
        if isinstance(query, str):
            from neuron_tasks.vectors.embed import embed_texts

            return as_matrix(embed_texts(self.pool, [query]), st.dim), query
        return as_matrix(query, st.dim), None

    def filter_ids(self, name: str, flt: dict[str, Any] | Sequence[int] | None) -> set[int] | None:
        if flt is None:
            return None
        if isinstance(flt, dict):
            return {int(r["id"]) for r in self.read_rows("vec_filter_ids", {"name": name, "filter": Jsonb(flt)})}
        return {int(i) for i in flt}

    def search(self, index: str, query: Any, k: int = 10, ef: int | None = None,
               filter: dict[str, Any] | Sequence[int] | None = None, *,
               include_metadata: bool = False, record: bool = True) -> SearchResult:
        """The k nearest items to a vector (or a text, embedded by the LLM provider).

        ef: this search's ef (default: the index's published ef_search, kept up to date).
        filter: a JSON document the items' metadata must contain, or a set of allowed ids.
        """
        if k < 1:
            raise ValueError("k must be at least 1")
        st = self.state(index)
        vec, text = self.query_vector(st, query)
        allowed = self.filter_ids(index, filter)
        with st.lock:
            ef_used = max(int(ef or st.ef), k)
            started = time.perf_counter()
            labels, dists = st.graph.knn(vec, k, ef_used, allowed)
            latency_ms = (time.perf_counter() - started) * 1000
        hits = [Hit(int(i), float(d)) for i, d in zip(labels[0], dists[0], strict=True)]
        result = SearchResult(uuid.uuid4(), index, k, ef_used, latency_ms, hits)
        if include_metadata:
            self.attach_details(index, hits)
        if record:
            self.record(result, vec, text, filtered=allowed is not None, sample=allowed is None and ef is None)
        return result

    def attach_details(self, index: str, hits: list[Hit]) -> None:
        rows = {int(r["id"]): r for r in self.read_rows("vec_item_details",
                                                         {"name": index, "ids": [h.id for h in hits]})}
        for h in hits:
            if h.id in rows:
                h.metadata, h.text = rows[h.id]["metadata"], rows[h.id]["body"]

    def record(self, result: SearchResult, vec: np.ndarray, text: str | None, *, filtered: bool,
               sample: bool, force_sample: bool = False) -> None:
        """Queue the query's metrics; keep its vector for a sampled share (filtered searches and
        searches with an explicit ef are not sampled: their recall is not the index's)."""
        keep = force_sample or (sample and random.random() < self.settings.vectors_sample_rate)
        self.recorder.record(QueryRecord(
            query_id=result.query_id, index_name=result.index, at=datetime.now(UTC), k=result.k, ef=result.ef,
            latency_ms=result.latency_ms, mode=result.mode, alpha=result.alpha, filtered=filtered,
            embedding=encode(vec[0]) if keep else None, query_text=text if keep else None,
            result_ids=result.ids if keep else []))

    def hybrid_search(self, index: str, text: str, k: int = 10, *, vector: Any = None, alpha: float | None = None,
                      ef: int | None = None, filter: dict[str, Any] | Sequence[int] | None = None,
                      include_metadata: bool = False) -> SearchResult:
        """alpha * vector similarity + (1 - alpha) * full-text rank (both min-max scaled over the
        candidates); alpha defaults to the index's published (tuned) alpha."""
        st = self.state(index)
        vec, _ = self.query_vector(st, text if vector is None else vector)
        allowed = self.filter_ids(index, filter)
        a = float(st.alpha if alpha is None else alpha)
        ef_used = max(int(ef or st.ef), k)
        started = time.perf_counter()
        cand = candidates(self.pool, st, text, vec, ef_used, allowed, size=max(POOL, k))
        ids, scores = rank(cand, a, k)
        latency_ms = (time.perf_counter() - started) * 1000
        hits = [Hit(int(i), float(1 - s), score=float(s)) for i, s in zip(ids, scores, strict=True)]
        result = SearchResult(uuid.uuid4(), index, k, ef_used, latency_ms, hits, mode="hybrid", alpha=a)
        if include_metadata:
            self.attach_details(index, hits)
        # Hybrid queries are always kept (vector + text) so feedback on them can tune alpha.
        self.record(result, vec, text, filtered=allowed is not None, sample=False, force_sample=True)
        return result

    def feedback(self, query_id: uuid.UUID | str, relevant_ids: Sequence[int], *, index: str | None = None) -> None:
        """Record which results of a query were relevant (the tuner's alpha uses it)."""
        self.flush_metrics()
        qid = uuid.UUID(str(query_id))
        if index is None:
            rows = self.rows("vec_sample_index", {"query_id": qid})
            if not rows:
                raise NeuronTasksError(f"unknown query id {qid}: only hybrid and sampled searches take feedback")
            index = rows[0]["index_name"]
        self.rows("vec_insert_feedback", {"query_id": qid, "index_name": index,
                                           "relevant_ids": [int(i) for i in relevant_ids]})

    # -- stats --------------------------------------------------------------------------------
    def stats(self, name: str | None = None, window_s: float = 600) -> list[dict[str, Any]]:
        """Per index: counters, ef, alpha, alert, and P50/P90/P95/P99 and recall over the window."""
        self.flush_metrics()
        perf = {r["index_name"]: r for r in self.rows("vec_query_stats", {"name": name, "window_s": window_s})}
        out = []
        for info in ([self.info(name)] if name else self.indexes()):
            row = {k: info[k] for k in ("name", "space", "dim", "m", "ef_construction", "ef_search", "alpha",
                                        "live_count", "deleted_count", "data_seq", "alert", "params_version")}
            row.update({k: v for k, v in perf.get(info["name"], {}).items() if k not in ("index_name", "ef_search")})
            snap = self.rows("vec_snapshot_info", {"name": info["name"]})
            row["snapshot_seq"] = snap[0]["seq"] if snap else None
            row["snapshot_bytes"] = snap[0]["bytes"] if snap else None
            st = self._states.get(info["name"])
            if st is not None:
                row["graph"] = st.graph.counts()
            out.append(row)
        return out

    def normalised(self, st: IndexState, vec: np.ndarray) -> np.ndarray:
        return normalise(st.space, vec)
