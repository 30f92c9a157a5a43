"""The two destinations the bench measures: what "correct" and "searchable" mean for each.

table  `<pipeline>_embeddings` (key, embedding real[], source_hash, ...): correct = one row per
       source row, source_hash = md5(text); searchable = the row holds the new source_hash.
index  `index:<pipeline>` (a neuron_tasks vector index; item id = the integer key, metadata
       {"pipeline", "key", "source_hash", "model"}): correct = one live item per source row with
       that metadata; searchable = `Vectors.search(index, vector of the new text, k=1)` returns
       the item at distance ~0 (the searcher replays committed writes on its refresh).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg

SOURCE = "bench_docs"
DIM = 384


class BenchFailure(SystemExit):
    pass


class Dest:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.pipeline = f"bench_{kind}"
        self.destination = f"index:{self.pipeline}" if kind == "index" else f"{self.pipeline}_embeddings"
        self.searcher: Any = None

    def create_args(self) -> dict[str, Any]:
        return {"destination": self.destination}

    # -- correctness ------------------------------------------------------------------------------
    def _bad_rows_sql(self) -> str:
        if self.kind == "table":
            return (f"SELECT count(*) FROM {self.destination} d FULL JOIN {SOURCE} s ON d.key = s.id::text "
                    "WHERE d.key IS NULL OR s.id IS NULL OR d.source_hash IS DISTINCT FROM md5(s.body) "
                    f"OR cardinality(d.embedding) <> {DIM}")
        return ("SELECT count(*) FROM (SELECT * FROM neuron_tasks.vector_items WHERE index_name = %(index)s "
                f"AND NOT deleted) v FULL JOIN {SOURCE} s ON v.id = s.id "
                "WHERE v.id IS NULL OR s.id IS NULL OR v.metadata->>'source_hash' IS DISTINCT FROM md5(s.body) "
                "OR v.metadata->>'key' IS DISTINCT FROM s.id::text "
                f"OR v.metadata->>'pipeline' IS DISTINCT FROM %(pipeline)s OR octet_length(v.embedding) <> {DIM * 4}")

    def verify(self, conn: psycopg.Connection[Any], phase: str) -> int:
        """Every source row has its destination row/item with source_hash = md5(text), nothing
        else; no backlog, no errors, no failed job. Returns the rows checked."""
        params = {"index": self.pipeline, "pipeline": self.pipeline}
        bad = one(conn, self._bad_rows_sql(), params if self.kind == "index" else {})
        backlog = one(conn, "SELECT count(*) FROM neuron_tasks.pipeline_backlog WHERE pipeline = %(pipeline)s", params)
        errors = one(conn, "SELECT count(*) FROM neuron_tasks.pipeline_errors WHERE pipeline = %(pipeline)s", params)
        failed = one(conn, "SELECT count(*) FROM neuron_tasks.messages WHERE state = 'failed'", {})
        if bad or backlog or errors or failed:
            raise BenchFailure(f"{phase} ({self.kind}): WRONG RESULT: {bad} destination rows missing, extra or "
                               f"stale, {backlog} backlog entries, {errors} pipeline errors, {failed} failed jobs")
        return one(conn, f"SELECT count(*) FROM {SOURCE}", {})

    def sample(self, conn: psycopg.Connection[Any], n: int) -> list[tuple[int, str, np.ndarray]]:
        """(key, text, stored vector) of n random rows."""
        if self.kind == "table":
            rows = conn.execute(f"SELECT s.id, s.body, d.embedding FROM {SOURCE} s JOIN {self.destination} d "
                                "ON d.key = s.id::text ORDER BY random() LIMIT %s", [n]).fetchall()
            return [(k, t, np.asarray(e, dtype=np.float32)) for k, t, e in rows]
        rows = conn.execute(f"SELECT s.id, s.body, v.embedding FROM {SOURCE} s JOIN neuron_tasks.vector_items v "
                            "ON v.index_name = %s AND NOT v.deleted AND v.id = s.id ORDER BY random() LIMIT %s",
                            [self.pipeline, n]).fetchall()
        return [(k, t, np.frombuffer(bytes(e), dtype="<f4")) for k, t, e in rows]

    def check_vectors(self, conn: psycopg.Connection[Any], encode: Any, url: str, n: int = 20) -> dict[str, Any]:
        """Stored vectors equal the direct model's (min cosine); for an index, each sampled item is
        its own vector's nearest neighbour in a fresh searcher's graph."""
        rows = self.sample(conn, n)
        direct = encode([t for _, t, _ in rows])
        stored = np.stack([v for _, _, v in rows])
        cos = float((direct * stored).sum(axis=1).min())
        if cos < 0.999:
            raise BenchFailure(f"{self.kind}: stored vectors differ from the direct model's (min cosine {cos:.4f})")
        out: dict[str, Any] = {"min_cosine_vs_direct": cos}
        if self.kind == "index":
            from neuron_tasks.vectors import Vectors, VectorSettings

            v = Vectors(url, settings=VectorSettings(database_url=url, vectors_sample_rate=0.0))
            try:
                found = sum(1 for (k, _, _), q in zip(rows, direct, strict=True)
                            if v.search(self.pipeline, q, k=1, record=False).ids == [k])
            finally:
                v.close()
            if found != len(rows):
                raise BenchFailure(f"index: only {found} of {len(rows)} sampled items are their own nearest hit")
            out["self_hits"] = f"{found}/{len(rows)}"
        return out

    # -- live: is the new text searchable? ---------------------------------------------------------
    def open_probe(self, url: str, sync_s: float) -> None:
        if self.kind == "table":
            self.searcher = psycopg.connect(url, autocommit=True)
        else:
            from neuron_tasks.vectors import Vectors, VectorSettings

            self.searcher = Vectors(url, settings=VectorSettings(database_url=url, vectors_sample_rate=0.0,
                                                                 vectors_sync_s=sync_s))
            self.searcher.state(self.pipeline)  # load the graph before timing

    def searchable(self, key: int, want_hash: str, vector: np.ndarray) -> bool:
        if self.kind == "table":
            row = self.searcher.execute(f"SELECT source_hash FROM {self.destination} WHERE key = %s", [str(key)],
                                        prepare=True).fetchone()
            return row is not None and row[0] == want_hash
        res = self.searcher.search(self.pipeline, vector, k=1, record=False)
        return bool(res.hits) and res.hits[0].id == key and res.hits[0].distance < 1e-3

    def close_probe(self) -> None:
        if self.searcher is not None:
            self.searcher.close()
            self.searcher = None


def one(conn: psycopg.Connection[Any], stmt: str, params: dict[str, Any]) -> int:
    row = conn.execute(stmt, params or None).fetchone()  # type: ignore[call-overload]
    return int(row[0]) if row else 0
