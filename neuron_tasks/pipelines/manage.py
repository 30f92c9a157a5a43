"""Create, update, drop and list pipelines (the SQL functions of schema/008 do the checking)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row, scalar_row

from neuron_tasks.sql import q

MODES = ("live", "background", "disabled")


class PipelineError(ValueError):
    """Bad pipeline input or an unknown pipeline; the message says what to change."""


def parse_step(step: str) -> dict[str, Any]:
    """`embed`, `embed:MODEL` or `embed:PROVIDER:MODEL` -> {"op": "embed", "provider"?, "model"?}."""
    op, _, rest = step.partition(":")
    if op != "embed":
        raise PipelineError(f"unknown step {step!r}: the one step supported is embed[:provider:model]")
    out: dict[str, Any] = {"op": "embed"}
    if rest:
        provider, sep, model = rest.partition(":")
        if sep:
            out["provider"], out["model"] = provider, model
        else:
            out["model"] = rest
    return out


def check_step(step: dict[str, Any]) -> None:
    """Refuse an unknown provider or local model before anything is created (no model call)."""
    from neuron_tasks.llm.settings import LOCAL_MODEL, LlmSettings

    provider = step.get("provider") or LlmSettings().llm_provider
    if provider not in ("local", "http"):
        raise PipelineError(f"unknown provider {provider!r} in step {step}: use local or http")
    model = step.get("model")
    if provider == "local" and model and model != LOCAL_MODEL and not Path(model).exists():
        raise PipelineError(f"unknown local model {model!r}: use {LOCAL_MODEL} or a sentence-transformers path")


def probe_model(url: str, step: dict[str, Any]) -> int:
    """Embed one short text with the step's provider and model; returns the dimension. An
    unknown HTTP model (the provider's 4xx), an unreachable provider or a broken local model
    raises PipelineError with the provider's own message."""
    from neuron_tasks.db import make_pool
    from neuron_tasks.llm.service import EmbedRequest, LlmService

    pool = make_pool(url, max_size=2, name="neuron_tasks.pipeline_check")
    try:
        res = LlmService(pool).embed_many([EmbedRequest(["neuron_tasks pipeline model check"], step.get("model"),
                                                         step.get("provider"), use_cache=False, store=False)])[0]
    except Exception as exc:
        what = step.get("model") or "the default model"
        raise PipelineError(f"model check failed for {what} (provider {step.get('provider') or 'default'}): "
                            f"{type(exc).__name__}: {exc}") from None
    finally:
        pool.close()
    return int(res["dims"])


def _index_dim(url: str, destination: str | None) -> int | None:
    """The dimension of an existing index destination (None: a table, or not created yet)."""
    if not destination or not destination.startswith("index:"):
        return None
    from neuron_tasks.vectors import store

    with connect(url) as conn:
        return store.index_dim(conn, destination.removeprefix("index:"))


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection for one pipeline operation."""
    return psycopg.connect(url, autocommit=True)


def create_pipeline(url: str, name: str, *, source: str, key: str, data: str, destination: str | None = None,
                    step: str | dict[str, Any] = "embed", mode: str = "background",
                    sync_interval: str = "30 seconds", batch_size: int | None = None,
                    check_model: bool | None = None) -> dict[str, Any]:
    """Create a pipeline; its existing rows wait in the backlog (run `sync` for the backfill).

    `check_model`: embed one test text first, so an unknown model (or, for an existing index
    destination, the wrong dimension) is refused before anything is created. Default: for
    HTTP models, and for an index destination that already exists. (SQL's create_pipeline
    cannot call a model: there the first sync reports such errors, as the pipeline's status.)
    """
    st = parse_step(step) if isinstance(step, str) else dict(step)
    check_step(st)
    batch_size = batch_size if batch_size is not None else default_batch_size(url)
    have_dim = _index_dim(url, destination)
    if check_model is None:
        from neuron_tasks.llm.settings import LlmSettings

        check_model = (st.get("provider") or LlmSettings().llm_provider) == "http" or have_dim is not None
    if check_model:
        dim = probe_model(url, st)
        if have_dim is not None and have_dim != dim:
            raise PipelineError(f"vector index {str(destination).removeprefix('index:')} has dimension {have_dim} "
                                f"but the model gives {dim}: use another index, or drop and recreate it")
    params = {"name": name, "source": source, "key": key, "data": data, "destination": destination,
              "steps": json.dumps([st]), "mode": mode, "interval": sync_interval, "batch_size": batch_size}
    with connect(url) as conn:
        try:
            conn.execute(q("pipeline_create"), params)
        except psycopg.Error as exc:
            raise PipelineError(error_message(exc)) from None
    return get_pipeline(url, name)


def default_batch_size(url: str) -> int:
    """`pipelines_default_batch_size` (config file, environment or `config set` in this database)."""
    from neuron_tasks.core.runtime import overlay
    from neuron_tasks.pipelines.settings import PipelineSettings

    return overlay(PipelineSettings(), url).pipelines_default_batch_size


def error_message(exc: psycopg.Error) -> str:
    """The server's message of a failed statement, with its hint."""
    diag = exc.diag
    text = diag.message_primary or str(exc).splitlines()[0]
    return f"{text} ({diag.message_hint})" if diag.message_hint else text


def get_pipeline(url: str, name: str) -> dict[str, Any]:
    with connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("pipeline_get"), {"name": name}).fetchone()
    if row is None:
        raise PipelineError(f"no pipeline named {name!r} (see `neuron-tasks pipeline list`)")
    return row


def update_pipeline(url: str, name: str, *, mode: str | None = None, sync_interval: str | None = None,
                    batch_size: int | None = None) -> dict[str, Any]:
    """Change mode, interval or batch size (SQL: neuron_tasks.update_pipeline). Switching back from
    disabled catches up on the kept backlog: at once for live, at the next tick for background."""
    if mode is not None and mode not in MODES:
        raise PipelineError(f"mode must be live, background or disabled, got {mode!r}")
    with connect(url) as conn, conn.cursor(row_factory=scalar_row) as cur:
        try:
            updated = cur.execute(q("pipeline_update"), {"name": name, "mode": mode, "interval": sync_interval,
                                                         "batch_size": batch_size}).fetchone()
        except psycopg.Error as exc:
            raise PipelineError(f"cannot update pipeline {name}: {error_message(exc)}") from None
    if not updated:
        raise PipelineError(f"no pipeline named {name!r} (see `neuron-tasks pipeline list`)")
    return get_pipeline(url, name)


def drop_pipeline(url: str, name: str, *, drop_destination: bool = False) -> bool:
    with connect(url) as conn, conn.cursor(row_factory=scalar_row) as cur:
        return bool(cur.execute(q("pipeline_drop"), {"name": name, "drop_destination": drop_destination}).fetchone())


def list_pipelines(url: str, name: str | None = None) -> list[dict[str, Any]]:
    """The `pipeline_metrics` rows (AIDB's columns), one per pipeline."""
    with connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(q("pipeline_metrics"), {"name": name}).fetchall()


def pipeline_errors(url: str, name: str, limit: int = 20) -> list[dict[str, Any]]:
    with connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(q("pipeline_errors"), {"name": name, "limit": limit}).fetchall()


def enqueue_due(url: str) -> list[str]:
    """Enqueue a sync for every background pipeline and folder scan that is due (the tick)."""
    with connect(url) as conn:
        return enqueue_due_on(conn)


def tick(conn: psycopg.Connection[Any]) -> str:
    """The scheduler leader's pipelines tick: enqueue a sync of every pipeline that is due."""
    due = enqueue_due_on(conn)
    return f"enqueued syncs: {', '.join(due)}" if due else "nothing due"


def enqueue_due_on(conn: psycopg.Connection[Any]) -> list[str]:
    """The tick on the caller's connection (the scheduler runs it in its fire's transaction)."""
    with conn.cursor(row_factory=dict_row) as cur:
        due = [r["name"] for r in cur.execute(q("pipeline_enqueue_due")).fetchall()]
        return due + [r["name"] for r in cur.execute(q("volume_enqueue_due")).fetchall()]
