"""PostgreSQL helpers for the harness (psycopg 3, installed in every PG venv)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


def with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def dbname_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def recreate_database(url: str) -> None:
    """DROP (forcefully) and CREATE the database named in ``url``."""
    name = dbname_of(url)
    if not name or name in ("postgres", "template0", "template1"):
        raise ValueError(f"refusing to recreate database {name!r}")
    with psycopg.connect(with_dbname(url, "postgres"), autocommit=True) as conn:
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))


def server_version(url: str) -> str:
    with psycopg.connect(with_dbname(url, "postgres"), autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
        sync = conn.execute("SHOW synchronous_commit").fetchone()
    assert row and fsync and sync
    return f"{row[0]} (fsync={fsync[0]}, synchronous_commit={sync[0]})"


class Probe:
    """One autocommit connection used as the side channel (a single cheap query)."""

    def __init__(self, url: str, exists_sql: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.sql = exists_sql
        self.calls = 0
        self.seconds = 0.0
        self.max_seconds = 0.0

    def pending(self) -> bool:
        t0 = time.perf_counter()
        row = self.conn.execute(self.sql).fetchone()  # type: ignore[arg-type]
        took = time.perf_counter() - t0
        self.calls += 1
        self.seconds += took
        self.max_seconds = max(self.max_seconds, took)
        return bool(row and row[0])

    def stats(self) -> dict[str, float]:
        """Cost of the side channel: the polling query's mean and max duration."""
        mean = self.seconds / self.calls if self.calls else 0.0
        return {"polls": self.calls, "mean_ms": round(mean * 1000, 3), "max_ms": round(self.max_seconds * 1000, 3)}

    def scalar(self, query: str) -> object:
        row = self.conn.execute(query).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None

    def close(self) -> None:
        self.conn.close()
