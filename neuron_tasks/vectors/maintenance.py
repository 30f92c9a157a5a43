"""Retention of the vector part's growing tables (run by the scheduler's leader)."""

from __future__ import annotations

from typing import Any

import psycopg

from neuron_tasks.core.runtime import effective, runtime_values
from neuron_tasks.sql import q
from neuron_tasks.vectors.settings import VectorSettings


def _settings(conn: psycopg.Connection[Any]) -> VectorSettings:
    return effective(VectorSettings(), runtime_values(conn))


def trim_queries(conn: psycopg.Connection[Any]) -> int:
    return conn.execute(q("vec_trim_queries"), {"retention_s": _settings(conn).vectors_metrics_retention_s}).rowcount


def trim_samples(conn: psycopg.Connection[Any]) -> int:
    return conn.execute(q("vec_trim_samples"), {"keep": _settings(conn).vectors_sample_size}).rowcount


def trim_feedback(conn: psycopg.Connection[Any]) -> int:
    retention_s = _settings(conn).vectors_metrics_retention_s * 7
    return conn.execute(q("vec_trim_feedback"), {"retention_s": retention_s}).rowcount
