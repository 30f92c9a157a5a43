"""The sync of one pipeline: take the backlog in batches, embed, write the destination.

One sync per pipeline at a time (a session advisory lock). Each batch: claim due backlog
entries (FOR UPDATE SKIP LOCKED, so entries a writer is changing are left for later), read the
current source rows, embed the texts whose md5 differs from the destination's (one model call
per batch), then in one transaction upsert/delete destination rows and remove the backlog
entries whose seq did not move: a row changed during its own processing stays and is processed
again. Re-running after a crash redoes at most one batch (upserts are idempotent). A batch
whose model call fails is embedded record by record, so one bad record does not block the rest;
failed records get an error row and are retried with exponential backoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from ..sql import q
from .destinations import Destination, destination_for
from .manage import PipelineError
from .settings import PipelineSettings

#: texts -> one vector per text.
Embedder = Callable[[list[str]], Sequence[Sequence[float]]]


@dataclass
class SyncResult:
    pipeline: str
    skipped: bool = False
    batches: int = 0
    embedded: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    seconds: float = 0.0
    more: bool = False  # stopped at max_seconds with backlog left
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "errors"} | {"errors": self.errors[:5]}


def service_embedder(pool: ConnectionPool, step: dict[str, Any]) -> Embedder:
    """The default embedder: the LLM service (cache, usage, pacing) with the step's provider/model."""
    from ..llm.service import EmbedRequest, LlmService

    service = LlmService(pool)

    def embed(texts: list[str]) -> list[list[float]]:
        res = service.embed_many([EmbedRequest(texts, step.get("model"), step.get("provider"))])[0]
        return res["embeddings"]  # type: ignore[no-any-return]

    return embed


def _read_statement(p: dict[str, Any]) -> sql.Composable:
    key, data = sql.Identifier(p["key_column"]), sql.Identifier(p["data_column"])
    return sql.SQL("SELECT ({key})::text, {data}::text, md5({data}::text) FROM {src} "
                   "WHERE {key} = ANY(%s::{ktype}[])").format(key=key, data=data, src=sql.SQL(p["source_table"]),
                                                              ktype=sql.SQL(p["key_type"]))


def _embed_isolating(embedder: Embedder, texts: list[str]) -> tuple[list[Sequence[float] | None], list[str]]:
    """One call for the batch; if it fails, one call per text so only the bad records fail."""
    try:
        vecs = list(embedder(texts))
        if len(vecs) != len(texts):
            raise RuntimeError(f"embedder returned {len(vecs)} vectors for {len(texts)} texts")
        return list(vecs), [""] * len(texts)
    except Exception as exc:
        if len(texts) == 1:
            return [None], [f"{type(exc).__name__}: {exc}"[:500]]
    out: list[Sequence[float] | None] = []
    errs: list[str] = []
    for t in texts:
        try:
            out.append(next(iter(embedder([t]))))
            errs.append("")
        except Exception as exc:
            out.append(None)
            errs.append(f"{type(exc).__name__}: {exc}"[:500])
    return out, errs


def sync(pool: ConnectionPool, name: str, *, embedder: Embedder | None = None, wait: bool = False,
         settings: PipelineSettings | None = None, max_batches: int | None = None,
         max_seconds: float | None = None, progress: Callable[[int, int], None] | None = None) -> SyncResult:
    """Process `name`'s backlog until no due entry is left (or `max_batches`, or the first batch
    that ends after `max_seconds`: then `more` is set).

    `wait`: wait for a running sync of the same pipeline instead of returning skipped.
    `progress(done, remaining)` is called after each batch.
    """
    settings = settings or PipelineSettings()
    result = SyncResult(name)
    start = time.monotonic()
    with pool.connection() as conn:
        got = conn.execute(q("pipeline_lock" if wait else "pipeline_try_lock"), {"name": name}).fetchone()
        if not wait and not (got and got[0]):
            result.skipped = True
            return result
        try:
            p = conn.cursor(row_factory=psycopg.rows.dict_row).execute(q("pipeline_get"), {"name": name}).fetchone()
            if p is None:
                raise PipelineError(f"no pipeline named {name!r}")
            step = p["steps"][0]
            embed = embedder or service_embedder(pool, step)
            model = step.get("model") or step.get("provider") or "default"
            read = _read_statement(p)
            dest = destination_for(p)
            done = 0
            while max_batches is None or result.batches < max_batches:
                n = _one_batch(conn, p, read, dest, embed, model, settings, result)
                if n == 0:
                    break
                result.batches += 1
                done += n
                if progress is not None:
                    left = conn.execute(q("pipeline_backlog_size"), {"name": name}).fetchone()
                    progress(done, int(left[0]) if left else 0)
                if max_seconds is not None and time.monotonic() - start >= max_seconds:
                    result.more = True
                    break
            conn.execute(q("pipeline_sync_ok"), {"name": name})
        except Exception as exc:
            conn.execute(q("pipeline_sync_failed"), {"name": name, "error": f"{type(exc).__name__}: {exc}"[:1000]})
            raise
        finally:
            conn.execute(q("pipeline_unlock"), {"name": name})
            result.seconds = time.monotonic() - start
    return result


def _one_batch(conn: psycopg.Connection[Any], p: dict[str, Any], read: sql.Composable, dest: Destination,
               embed: Embedder, model: str, settings: PipelineSettings, result: SyncResult) -> int:
    name = p["name"]
    with conn.transaction():
        claimed = conn.execute(q("pipeline_claim"), {"name": name, "limit": p["batch_size"]}).fetchall()
    if not claimed:
        return 0
    keys = [k for k, _, _ in claimed]
    rows = {k: (d, h) for k, d, h in conn.execute(read, [keys]).fetchall() if d is not None}
    have, blocked = dest.current(conn, keys)
    # A key the destination cannot take fails only if its row exists (nothing to do otherwise).
    failed = {k: e for k, e in blocked.items() if k in rows}
    todo = [k for k in keys if k in rows and k not in failed and have.get(k) != rows[k][1]]
    gone = [k for k in keys if k not in rows and k in have]
    unchanged = len(keys) - len(todo) - len(gone) - len(failed)
    vecs, errs = _embed_isolating(embed, [rows[k][0] for k in todo]) if todo else ([], [])
    up_keys: list[str] = []
    up_vecs: list[Sequence[float]] = []
    for k, v, e in zip(todo, vecs, errs, strict=True):
        if v is None:
            failed[k] = e
        else:
            up_keys.append(k)
            up_vecs.append(v)
    seqs = {k: (s, a) for k, s, a in claimed}
    finished = [k for k in keys if k not in failed]
    with conn.transaction():
        if up_keys:
            dest.write(conn, up_keys, np.asarray(up_vecs, dtype=np.float32), [rows[k][1] for k in up_keys],
                       [rows[k][0] for k in up_keys], model)
        if gone:
            dest.delete(conn, gone)
        conn.execute(q("pipeline_done"), {"name": name, "keys": finished, "seqs": [seqs[k][0] for k in finished]})
        for k, e in failed.items():
            conn.execute(q("pipeline_failed"), {"name": name, "key": k, "seq": seqs[k][0],
                                                "backoff_s": settings.pipelines_retry_backoff_s,
                                                "backoff_max_s": settings.pipelines_retry_backoff_max_s})
            conn.execute(q("pipeline_error_record"), {"name": name, "key": k, "error": e,
                                                      "attempts": seqs[k][1] + 1})
    result.embedded += len(up_keys)
    result.deleted += len(gone)
    result.unchanged += unchanged
    result.failed += len(failed)
    result.errors.extend(f"{k}: {e}" for k, e in failed.items())
    return len(keys)
