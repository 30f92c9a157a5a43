"""Query metrics, written in batches by one background thread per searching process.

Every search adds a record (latency of the ANN step, k, ef, mode); a sampled search also keeps
its query vector, text and returned ids so the tuner can measure recall later. Searches never
wait for the database: records are flushed every `vectors_metrics_flush_s` or 500 records.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool

from neuron_tasks.sql import q

log = logging.getLogger(__name__)
BATCH = 500


@dataclass
class QueryRecord:
    query_id: UUID
    index_name: str
    at: datetime
    k: int
    ef: int
    latency_ms: float
    mode: str = "vector"
    alpha: float | None = None
    filtered: bool = False
    embedding: bytes | None = None  # set when sampled
    query_text: str | None = None
    result_ids: list[int] = field(default_factory=list)


class MetricsRecorder(threading.Thread):
    def __init__(self, pool: Callable[[], ConnectionPool], flush_s: float) -> None:
        super().__init__(name="neuron-tasks-vector-metrics", daemon=True)
        self._pool = pool
        self.flush_s = flush_s
        self._queue: queue.Queue[QueryRecord | None] = queue.Queue()
        self._flushed = threading.Condition()
        self._pending = 0
        self._halt = threading.Event()

    def record(self, rec: QueryRecord) -> None:
        with self._flushed:
            self._pending += 1
        self._queue.put(rec)

    def run(self) -> None:
        while not self._halt.is_set():
            batch = self._take(self.flush_s)
            if batch:
                self._write(batch)

    def _take(self, timeout: float) -> list[QueryRecord]:
        batch: list[QueryRecord] = []
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return batch
        if first is not None:
            batch.append(first)
        while len(batch) < BATCH:
            try:
                rec = self._queue.get_nowait()
            except queue.Empty:
                break
            if rec is not None:
                batch.append(rec)
        return batch

    def _write(self, batch: list[QueryRecord]) -> None:
        try:
            with self._pool().connection() as conn, conn.transaction():
                conn.execute(q("vec_insert_queries"), {
                    "query_ids": [r.query_id for r in batch],
                    "index_names": [r.index_name for r in batch],
                    "ats": [r.at for r in batch],
                    "ks": [r.k for r in batch],
                    "efs": [r.ef for r in batch],
                    "latencies": [r.latency_ms for r in batch],
                    "modes": [r.mode for r in batch],
                    "alphas": [r.alpha for r in batch],
                    "filtered": [r.filtered for r in batch],
                    "sampled": [r.embedding is not None for r in batch],
                })
                samples = [r for r in batch if r.embedding is not None]
                if samples:
                    with conn.cursor() as cur:
                        cur.executemany(q("vec_insert_sample"), [{
                            "query_id": r.query_id, "index_name": r.index_name, "at": r.at, "k": r.k,
                            "ef": r.ef, "embedding": r.embedding, "query_text": r.query_text,
                            "result_ids": r.result_ids} for r in samples])
        except psycopg.Error as exc:
            log.warning("could not write %d query metrics (dropped): %s", len(batch), exc)
        finally:
            with self._flushed:
                self._pending -= len(batch)
                self._flushed.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record so far is written; True when done."""
        self._queue.put(None)  # wake the thread now
        with self._flushed:
            return self._flushed.wait_for(lambda: self._pending <= 0, timeout=timeout)

    def stop(self) -> None:
        if self.is_alive():
            self.flush()
        self._halt.set()
        self._queue.put(None)
        self.join(5)
