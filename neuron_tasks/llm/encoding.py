"""How an embed result carries its vectors.

- "json" (the default): `embeddings`, a list of lists of floats rounded to 7 decimals;
- "f32": `embeddings_f32`, one base64 string of the float32 matrix (little-endian, row after
  row; `count` rows of `dims`): exact, about half the bytes of "json" and a tenth of its cost
  to write and read;
- "array" (in-process callers of `LlmService` only, never through a job's stored result):
  `embeddings`, the float32 numpy matrix itself.

`embeddings_of(result)` gives the float32 matrix of any of them.
"""

from __future__ import annotations

import base64
from typing import Any

from neuron_tasks.llm.errors import InvalidRequest

#: What an embed job may ask for (a job's result is stored as JSON, so not "array").
JOB_ENCODINGS = ("json", "f32")
ENCODINGS = (*JOB_ENCODINGS, "array")


def check(encoding: str, allowed: tuple[str, ...] = ENCODINGS) -> str:
    if encoding not in allowed:
        raise InvalidRequest(f"embed: encoding must be one of {', '.join(allowed)}, not {encoding!r}")
    return encoding


def vectors_json(matrix: Any) -> list[list[float]]:
    """Rows as lists of floats rounded to 7 decimals (float32 holds about 7 digits): a third of
    the JSON of full float64 reprs."""
    import numpy as np

    return np.round(matrix.astype(np.float64), 7).tolist()


def f32_text(matrix: Any) -> str:
    """The float32 matrix as base64 of its little-endian bytes, row after row."""
    import numpy as np

    return base64.b64encode(np.ascontiguousarray(matrix, dtype="<f4").tobytes()).decode("ascii")


def embeddings_of(result: dict[str, Any]) -> Any:
    """The float32 matrix (count, dims) of an embed result, whatever its encoding."""
    import numpy as np

    packed = result.get("embeddings_f32")
    if packed is not None:
        flat = np.frombuffer(base64.b64decode(packed), dtype="<f4").astype(np.float32)
        return flat.reshape(int(result["count"]), int(result["dims"]))
    matrix = np.asarray(result["embeddings"], dtype=np.float32)
    return matrix.reshape(len(matrix), int(result["dims"]) if len(matrix) else 0)
