"""Send a float32 matrix to PostgreSQL as one binary `real[]` parameter.

Formatting 38,400 floats as an array literal costs about 15 ms in Python and as much again for
the server to parse; the binary array format costs about 0.1 ms (numpy writes it) and keeps
every float32 exact. Rows are cut back out in SQL with a slice:

    SELECT (%(flat)s::real[])[(u.i - 1) * %(dim)s + 1 : u.i * %(dim)s]
    FROM unnest(...) WITH ORDINALITY AS u(..., i)
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

FLOAT4_OID = 700
FLOAT4_ARRAY_OID = 1021


class Float4Array:
    """A float32 matrix (or vector), flattened row by row, as a binary one-dimensional real[]."""

    __slots__ = ("data", "dim", "rows")

    def __init__(self, matrix: Any) -> None:
        arr = np.asarray(matrix, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2:
            raise ValueError(f"expected a matrix, got shape {arr.shape}")
        self.rows, self.dim = int(arr.shape[0]), int(arr.shape[1])
        flat = np.ascontiguousarray(arr).ravel()
        body = np.empty(flat.size, dtype=[("len", ">i4"), ("v", ">f4")])
        body["len"] = 4
        body["v"] = flat
        # ndim, has-null flag, element oid, then (size, lower bound) of the one dimension
        self.data = struct.pack(">iiiii", 1, 0, FLOAT4_OID, flat.size, 1) + body.tobytes()


class Float4ArrayDumper(Dumper):
    format = Format.BINARY
    oid = FLOAT4_ARRAY_OID

    def dump(self, obj: Float4Array) -> bytes:
        return obj.data


psycopg.adapters.register_dumper(Float4Array, Float4ArrayDumper)
