"""Search what a pipeline wrote: embed the query with the pipeline's own step (provider, model),
then an HNSW search of its vector index (`index:NAME` destinations) or an exact cosine scan of
its destination table (numpy over every row: fine for thousands of rows; use an index
destination for more). Hits carry the source key, the score and the source row's text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from neuron_tasks.pipelines.destinations import INDEX_PREFIX
from neuron_tasks.pipelines.engine import service_embedder
from neuron_tasks.pipelines.manage import PipelineError, get_pipeline


@dataclass
class PipelineHit:
    key: str
    score: float  # cosine similarity
    text: str | None


def search(pool: ConnectionPool, url: str, name: str, query: str, k: int = 5) -> list[PipelineHit]:
    if k < 1:
        raise PipelineError("k must be at least 1")
    p = get_pipeline(url, name)
    qv = np.asarray(service_embedder(pool, p["steps"][0])([query])[0], dtype=np.float32)
    dest = str(p["destination"])
    if dest.startswith(INDEX_PREFIX):
        hits = _search_index(url, dest.removeprefix(INDEX_PREFIX), qv, k)
    else:
        hits = _scan_table(pool, dest, qv, k)
    return _with_text(pool, p, hits)


def _search_index(url: str, index: str, qv: np.ndarray, k: int) -> list[PipelineHit]:
    from neuron_tasks.vectors import UnknownIndex, Vectors, VectorSettings

    v = Vectors(url, settings=VectorSettings(database_url=url, vectors_sample_rate=0.0))
    try:
        try:
            res = v.search(index, qv, k=k)
        except UnknownIndex:
            return []  # nothing synced yet: the first sync creates the index
        v.attach_details(index, res.hits)
        v.flush_metrics()
    finally:
        v.close()
    return [PipelineHit(str((h.metadata or {}).get("key", h.id)), 1.0 - float(h.distance), None) for h in res.hits]


def _scan_table(pool: ConnectionPool, table: str, qv: np.ndarray, k: int) -> list[PipelineHit]:
    keys: list[str] = []
    blocks: list[np.ndarray] = []
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT key, embedding FROM {}").format(sql.SQL(table)))
        while rows := cur.fetchmany(5000):
            keys.extend(r["key"] for r in rows)
            blocks.append(np.asarray([r["embedding"] for r in rows], dtype=np.float32))
    if not keys:
        return []
    mat = np.concatenate(blocks)
    scores = mat @ qv / (np.linalg.norm(mat, axis=1) * (np.linalg.norm(qv) or 1.0) + 1e-12)
    best = np.argsort(-scores)[:k]
    return [PipelineHit(keys[i], float(scores[i]), None) for i in best]


def _with_text(pool: ConnectionPool, p: dict[str, Any], hits: list[PipelineHit]) -> list[PipelineHit]:
    if not hits:
        return hits
    stmt = sql.SQL("SELECT ({key})::text AS key, ({data})::text AS text FROM {src} "
                   "WHERE {key} = ANY(%s::{ktype}[])").format(
        key=sql.Identifier(p["key_column"]), data=sql.Identifier(p["data_column"]), src=sql.SQL(p["source_table"]),
        ktype=sql.SQL(p["key_type"]))
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(stmt, [[h.key for h in hits]]).fetchall()
    texts: dict[str, str | None] = {r["key"]: r["text"] for r in rows}
    for h in hits:
        h.text = texts.get(h.key)
    return hits
