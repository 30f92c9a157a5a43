"""The binary real[] parameter used to write embeddings: exact float32 values, rows sliced in SQL."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from neuron_tasks.pgarray import Float4Array


def test_matrix_round_trips_exactly_and_slices_into_rows(clean_db: str) -> None:
    rng = np.random.default_rng(7)
    mat = rng.standard_normal((5, 7)).astype(np.float32)
    mat[2, 3] = np.float32(1e-38)  # denormal-adjacent values survive too
    flat = Float4Array(mat)
    assert (flat.rows, flat.dim) == (5, 7)
    with psycopg.connect(clean_db) as conn:
        rows = conn.execute("SELECT (%(f)s::real[])[(i - 1) * %(d)s + 1 : i * %(d)s] "
                            "FROM generate_series(1, %(n)s) AS i ORDER BY i",
                            {"f": flat, "d": flat.dim, "n": flat.rows}).fetchall()
    got = np.asarray([r[0] for r in rows], dtype=np.float32)
    assert np.array_equal(got, mat)
    with psycopg.connect(clean_db) as conn:
        one = conn.execute("SELECT %s::real[]", [Float4Array(mat[0])]).fetchone()[0]
    assert np.array_equal(np.asarray(one, dtype=np.float32), mat[0])


def test_rejects_a_tensor() -> None:
    with pytest.raises(ValueError, match="expected a matrix"):
        Float4Array(np.zeros((2, 2, 2)))
