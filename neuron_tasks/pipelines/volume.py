"""Folder (volume) sources: text files embedded chunk by chunk, kept in sync by scans.

A scan compares each file's modification time (then its sha256, when the time moved) with
`pipeline_volume_files`; new and changed files are chunked (size and overlap in characters) and
embedded in batches (one model call per batch), their old chunks replaced in one transaction
with their state row; removed files lose their chunks. Destination keys are `path#N`.
The scan holds the same advisory lock as a table sync, under the pipeline's name.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import class_row, dict_row, scalar_row
from psycopg_pool import ConnectionPool

from neuron_tasks.pgarray import Float4Array
from neuron_tasks.pipelines.engine import Embedder, locked, runtime_settings, service_embedder
from neuron_tasks.pipelines.manage import (
    PipelineError,
    check_step,
    connect,
    default_batch_size,
    error_message,
    parse_step,
)
from neuron_tasks.sql import q

_DEST = ("CREATE TABLE {dst} (key text PRIMARY KEY, embedding real[] NOT NULL, source_hash text NOT NULL, "
         "model text, created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())")

_CHECKS = {
    "pipeline_volumes_name_check": "the name is 1-40 lower-case letters, digits or _, starting with a letter",
    "pipeline_volumes_background_sync_interval_check": "sync interval must be between 1 second and 2 days",
    "pipeline_volumes_batch_size_check": "batch size must be between 1 and 10000",
    "pipeline_volumes_chunk_size_check": "chunk size must be between 20 and 100000 characters",
}


@dataclass(frozen=True, slots=True)
class _FileState:
    """What the last scan recorded of a file."""

    path: str
    mtime: float
    sha256: str
    chunks: int


def _scalar(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> Any:
    """The one value the named query answers (None: no row)."""
    with conn.cursor(row_factory=scalar_row) as cur:
        return cur.execute(q(name), params).fetchone()


def is_volume(pool: ConnectionPool, name: str) -> bool:
    """Is `name` a folder pipeline (not a table pipeline)?"""
    with pool.connection() as conn:
        return bool(_scalar(conn, "volume_exists", {"name": name}))


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    """Windows of `size` characters, each starting `size - overlap` after the previous one."""
    if not text.strip():
        return []
    step = size - overlap
    return [text[i:i + size] for i in range(0, max(len(text) - overlap, 1), step)]


def create_volume_pipeline(url: str, name: str, *, folder: str | Path, pattern: str = "**/*.txt",
                           chunk_size: int = 1000, chunk_overlap: int = 100, step: str = "embed",
                           destination: str | None = None, sync_interval: str = "5 minutes",
                           batch_size: int | None = None) -> dict[str, Any]:
    """Register a folder of text files; the destination table is created (all or nothing)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"folder {str(folder)!r} does not exist or is not a directory")
    if not 0 <= chunk_overlap < chunk_size:
        raise PipelineError(f"chunk overlap must be >= 0 and below the chunk size ({chunk_overlap} vs {chunk_size})")
    st = parse_step(step)
    check_step(st)
    batch_size = batch_size if batch_size is not None else default_batch_size(url)
    dest = destination or f"{name}_embeddings"
    if dest.startswith("index:"):
        raise PipelineError("folder pipelines write a destination table; index:NAME destinations are for "
                            "table sources (give a table name, or leave --destination out)")
    with connect(url) as conn:
        try:
            with conn.transaction():
                if _scalar(conn, "pipeline_exists", {"name": name}):
                    raise PipelineError(f"pipeline {name} already exists (a table pipeline)")
                if _scalar(conn, "relation_exists", {"name": dest}):
                    raise PipelineError(f"destination {dest} already exists: name a new table (it is created)")
                parts = dest.split(".")
                conn.execute(sql.SQL(_DEST).format(dst=sql.Identifier(*parts)))
                qualified = _scalar(conn, "relation_name", {"name": dest})
                conn.execute(q("volume_create"), {
                    "name": name, "folder": str(folder.resolve()), "pattern": pattern, "chunk_size": chunk_size,
                    "chunk_overlap": chunk_overlap, "steps": json.dumps([st]), "destination": qualified,
                    "interval": sync_interval, "batch_size": batch_size})
        except psycopg.errors.CheckViolation as exc:
            what = _CHECKS.get(exc.diag.constraint_name or "", error_message(exc))
            raise PipelineError(f"cannot create folder pipeline {name}: {what}") from None
        except psycopg.Error as exc:
            raise PipelineError(f"cannot create folder pipeline {name}: {error_message(exc)}") from None
    return get_volume(url, name)


def get_volume(url: str, name: str) -> dict[str, Any]:
    with connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("volume_get"), {"name": name}).fetchone()
    if row is None:
        raise PipelineError(f"no folder pipeline named {name!r}")
    return row


def drop_volume_pipeline(url: str, name: str, *, drop_destination: bool = False) -> bool:
    with connect(url) as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("volume_drop"), {"name": name}).fetchone()
        if row and drop_destination:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.SQL(row["destination"])))
    return row is not None


def scan_volume(pool: ConnectionPool, name: str, *, embedder: Embedder | None = None,
                wait: bool = False) -> dict[str, Any]:
    """One scan: returns counts of new, changed, removed, unchanged files and chunks written."""
    out = {"pipeline": name, "skipped": False, "new": 0, "changed": 0, "removed": 0, "unchanged": 0,
           "chunks": 0, "seconds": 0.0}
    start = time.monotonic()
    with pool.connection() as conn, locked(conn, name, wait=wait, ok="volume_scan_ok",
                                           failed="volume_scan_failed") as got:
        if not got:
            out["skipped"] = True
            return out
        with conn.cursor(row_factory=dict_row) as cur:
            v = cur.execute(q("volume_get"), {"name": name}).fetchone()
        if v is None:
            raise PipelineError(f"no folder pipeline named {name!r}")
        cache = runtime_settings(pool).pipelines_llm_cache
        _scan(conn, pool, v, embedder or service_embedder(pool, v["steps"][0], cache=cache), out)
    out["seconds"] = time.monotonic() - start
    return out


def _scan(conn: psycopg.Connection[Any], pool: ConnectionPool, v: dict[str, Any], embed: Embedder,
          out: dict[str, Any]) -> None:
    name, root = v["name"], Path(v["folder"])
    dst = sql.SQL(v["destination"])
    model = v["steps"][0].get("model") or v["steps"][0].get("provider") or "default"
    with conn.cursor(row_factory=class_row(_FileState)) as cur:
        state = {f.path: f for f in cur.execute(q("volume_files"), {"name": name}).fetchall()}
    seen: set[str] = set()
    for path in sorted(p for p in root.glob(v["pattern"]) if p.is_file()):
        rel = path.relative_to(root).as_posix()
        seen.add(rel)
        mtime = path.stat().st_mtime
        old = state.get(rel)
        if old is not None and old.mtime == mtime:
            out["unchanged"] += 1
            continue
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if old is not None and old.sha256 == digest:
            conn.execute(q("volume_file_put"), {"name": name, "path": rel, "mtime": mtime, "sha256": digest,
                                                "chunks": old.chunks})
            out["unchanged"] += 1
            continue
        chunks = chunk_text(raw.decode("utf-8", "replace"), v["chunk_size"], v["chunk_overlap"])
        vecs: list[Any] = []
        for i in range(0, len(chunks), v["batch_size"]):
            vecs.extend(embed(chunks[i:i + v["batch_size"]]))
        with conn.transaction():
            if old is not None:
                conn.execute(sql.SQL("DELETE FROM {} WHERE key = ANY(%s)").format(dst),
                             [[f"{rel}#{i}" for i in range(old.chunks)]])
            if chunks:
                flat = Float4Array(np.asarray(vecs, dtype=np.float32))
                conn.execute(sql.SQL("INSERT INTO {} (key, embedding, source_hash, model) "
                                     "SELECT u.k, (%(flat)s::real[])[(u.i - 1) * %(dim)s + 1 : u.i * %(dim)s], "
                                     "u.h, %(model)s FROM unnest(%(keys)s::text[], %(hashes)s::text[]) "
                                     "WITH ORDINALITY AS u(k, h, i)").format(dst),
                             {"flat": flat, "dim": flat.dim, "model": model,
                              "keys": [f"{rel}#{i}" for i in range(len(chunks))],
                              "hashes": [hashlib.md5(c.encode()).hexdigest() for c in chunks]})
            conn.execute(q("volume_file_put"), {"name": name, "path": rel, "mtime": mtime, "sha256": digest,
                                                "chunks": len(chunks)})
        out["changed" if old is not None else "new"] += 1
        out["chunks"] += len(chunks)
    for rel, gone in state.items():
        if rel not in seen:
            with conn.transaction():
                conn.execute(sql.SQL("DELETE FROM {} WHERE key = ANY(%s)").format(dst),
                             [[f"{rel}#{i}" for i in range(gone.chunks)]])
                conn.execute(q("volume_file_forget"), {"name": name, "path": rel})
            out["removed"] += 1
