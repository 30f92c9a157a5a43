"""`neuron-tasks pipeline`: keep embeddings of a Postgres table in sync (create, list, status,
run, update, drop)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

import typer

from neuron_tasks.commandline import (
    JsonOpt,
    YesOpt,
    confirm_destructive,
    console,
    database_url,
    done,
    emit,
    fail,
    jsonable,
)

app = typer.Typer(help="Pipelines (after EDB AIDB): triggers record changes of a source table in a backlog; "
                  "sync jobs embed them in batches into a destination table (key, embedding, source_hash, "
                  "timestamps) or a vector index (--destination index:NAME). Modes: live (a job per committing "
                  "transaction), background (a sync every interval), disabled (changes kept for later).",
                  no_args_is_help=True)

METRIC_COLUMNS = ["pipeline", "auto_processing", "table_unprocessed_rows", "count_source_records",
                  "count_destination_records", "count_errors", "status", "last_sync_at"]


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, timedelta) else v) for k, v in row.items()}


def _print(row: dict[str, Any], as_json: bool) -> None:
    row = _plain(row)
    if as_json:
        print(json.dumps(jsonable(row)))
    else:
        console.print(f"pipeline {row['name']}: {row['source_table']}.{row['data_column']} "
                      f"(key {row['key_column']}) -> {row['destination']}; mode {row['auto_processing']}, "
                      f"every {row['background_sync_interval']}, batch {row['batch_size']}, "
                      f"step {json.dumps(row['steps'][0])}")


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Pipeline name (lower-case letters, digits, _).")],
    source: Annotated[str, typer.Option(help="Source table ([schema.]table), or folder:PATH for a folder of "
                                             "text files.")],
    key: Annotated[str | None, typer.Option(help="Key column of the source table (unique).")] = None,
    data: Annotated[str | None, typer.Option(help="Text column to embed.")] = None,
    step: Annotated[str, typer.Option(help="embed, embed:MODEL or embed:PROVIDER:MODEL.")] = "embed",
    destination: Annotated[str | None, typer.Option(
        help="Destination table (created if missing; default NAME_embeddings), or index:NAME for a vector "
             "index (created by the first sync with the model's dimension; searchable with `index search` "
             "and `pipeline search`).")] = None,
    mode: Annotated[str, typer.Option(help="live, background or disabled.")] = "background",
    sync_interval: Annotated[str, typer.Option(help="Background sync interval (Postgres interval, "
                                                    "1 second to 2 days).")] = "30 seconds",
    batch_size: Annotated[int | None, typer.Option(
        help="Records per model call and per transaction (default: pipelines_default_batch_size, 100). "
             "Bigger batches embed faster (the model sorts a call's texts by length, so less padding).")] = None,
    pattern: Annotated[str, typer.Option(help="Folder sources: glob of the files to embed.")] = "**/*.txt",
    chunk_size: Annotated[int, typer.Option(help="Folder sources: chunk size in characters.")] = 1000,
    overlap: Annotated[int, typer.Option(help="Folder sources: characters shared by consecutive chunks.")] = 100,
    check_model: Annotated[bool | None, typer.Option(
        "--check-model/--no-check-model",
        help="Embed one test text first so an unknown model or a wrong index dimension is refused before "
             "anything is created (default: for HTTP models and existing index destinations).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a pipeline; existing rows wait in the backlog (`pipeline run NAME` does the backfill).
    Folder sources (--source folder:PATH) are scanned every --sync-interval."""
    from neuron_tasks.pipelines import PipelineError, create_pipeline, create_volume_pipeline

    try:
        if source.startswith("folder:"):
            row = create_volume_pipeline(database_url(), name, folder=source.removeprefix("folder:"), pattern=pattern,
                                         chunk_size=chunk_size, chunk_overlap=overlap, step=step,
                                         destination=destination, sync_interval=sync_interval,
                                         batch_size=batch_size)
            if as_json:
                print(json.dumps(jsonable(_plain(row))))
            else:
                console.print(f"folder pipeline {name}: {row['folder']}/{row['pattern']} -> {row['destination']} "
                              f"(chunks of {chunk_size}, overlap {overlap}), scanned every "
                              f"{row['background_sync_interval']}")
            return
        if key is None or data is None:
            fail("a table source needs --key and --data")
        row = create_pipeline(database_url(), name, source=source, key=str(key), data=str(data),
                              destination=destination, step=step, mode=mode, sync_interval=sync_interval,
                              batch_size=batch_size, check_model=check_model)
    except PipelineError as exc:
        fail(str(exc))
    _print(row, as_json)


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Every pipeline with AIDB's metrics (unprocessed rows, source/destination counts, status)."""
    from neuron_tasks.pipelines import list_pipelines

    emit([_plain(r) for r in list_pipelines(database_url())], METRIC_COLUMNS, as_json=as_json, title="pipelines")


@app.command()
def status(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    errors: Annotated[int, typer.Option(help="How many per-record errors to show.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """One pipeline's definition, metrics and latest per-record errors."""
    from neuron_tasks.pipelines import PipelineError, get_pipeline, get_volume, list_pipelines, pipeline_errors

    url = database_url()
    try:
        p = get_pipeline(url, name)
    except PipelineError:
        try:
            p = get_volume(url, name)
        except PipelineError:
            fail(f"no pipeline named {name!r} (see `neuron-tasks pipeline list`)")
    metrics = list_pipelines(url, name)[0]
    errs = pipeline_errors(url, name, errors)
    if as_json:
        print(json.dumps(jsonable({"pipeline": _plain(p), "metrics": metrics, "errors": errs})))
        return
    if "folder" in p:
        console.print(f"folder pipeline {name}: {p['folder']}/{p['pattern']} -> {p['destination']}")
    else:
        _print(p, False)
    emit([{"metric": k, "value": metrics[k]} for k in [*METRIC_COLUMNS[1:], "last_error"]], ["metric", "value"],
         as_json=False, title=f"pipeline {name}")
    if errs:
        emit(errs, ["key", "error", "attempts", "failed_at"], as_json=False, title="per-record errors")


@app.command()
def run(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    as_json: JsonOpt = False,
) -> None:
    """Process the backlog now, in this process (the initial backfill too), with a progress bar."""
    from rich.progress import Progress

    from neuron_tasks.db import make_pool
    from neuron_tasks.pipelines import PipelineError, scan_volume, sync
    from neuron_tasks.pipelines.volume import is_volume

    pool = make_pool(database_url(), max_size=4, name="neuron_tasks.pipeline_run")
    try:
        if is_volume(pool, name):
            scan = scan_volume(pool, name, wait=True)
            if as_json:
                print(json.dumps(scan))
            else:
                console.print(f"{name}: {scan['new']} new, {scan['changed']} changed, {scan['removed']} removed, "
                              f"{scan['unchanged']} unchanged files; {scan['chunks']} chunks embedded "
                              f"({scan['seconds']:.1f}s)")
            return
        with Progress(console=console, disable=as_json) as progress:
            task = progress.add_task(f"syncing {name}", total=None)

            def tick(done: int, left: int) -> None:
                progress.update(task, completed=done, total=done + left)

            res = sync(pool, name, wait=True, progress=tick)
    except PipelineError as exc:
        fail(str(exc))
    finally:
        pool.close()
    out = res.as_dict()
    if as_json:
        print(json.dumps(out))
    else:
        console.print(f"{name}: {out['embedded']} embedded, {out['deleted']} deleted, {out['unchanged']} unchanged, "
                      f"{out['failed']} failed in {out['batches']} batches ({out['seconds']:.1f}s)")


@app.command()
def search(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    query: Annotated[str, typer.Argument(help="Text to search for (embedded with the pipeline's model).")],
    k: Annotated[int, typer.Option("-k", "--k", help="How many hits.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Search a pipeline's embeddings: HNSW for index destinations, an exact scan of a table."""
    from neuron_tasks.db import make_pool
    from neuron_tasks.pipelines import PipelineError
    from neuron_tasks.pipelines import search as run_search

    url = database_url()
    pool = make_pool(url, max_size=2, name="neuron_tasks.pipeline_search")
    try:
        hits = run_search(pool, url, name, query, k)
    except PipelineError as exc:
        fail(str(exc))
    finally:
        pool.close()
    emit([{"key": h.key, "score": round(h.score, 4), "text": h.text} for h in hits], ["key", "score", "text"],
         as_json=as_json, title=f"{name}: {query}")


@app.command()
def update(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    mode: Annotated[str | None, typer.Option(help="live, background or disabled.")] = None,
    sync_interval: Annotated[str | None, typer.Option(help="Background sync interval.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Records per model call.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change mode, interval or batch size (back from disabled, the kept backlog catches up)."""
    from neuron_tasks.pipelines import PipelineError, update_pipeline

    try:
        row = update_pipeline(database_url(), name, mode=mode, sync_interval=sync_interval, batch_size=batch_size)
    except PipelineError as exc:
        fail(str(exc))
    _print(row, as_json)


@app.command()
def drop(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    drop_destination: Annotated[bool, typer.Option(help="Also drop the destination table.")] = False,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove a pipeline's triggers, backlog and errors (the destination table stays unless asked)."""
    from neuron_tasks.pipelines import drop_pipeline, drop_volume_pipeline, list_pipelines

    url = database_url()
    if not list_pipelines(url, name):
        fail(f"no pipeline named {name!r}")
    confirm_destructive(f"drop pipeline {name} with its backlog and errors"
                        + (" and its destination table" if drop_destination else ""), yes=yes)
    if not (drop_pipeline(url, name, drop_destination=drop_destination)
            or drop_volume_pipeline(url, name, drop_destination=drop_destination)):
        fail(f"no pipeline named {name!r}")
    done(as_json, {"dropped": "pipeline", "name": name, "destination_dropped": drop_destination},
         f"dropped pipeline {name}")


DEMO_CORPUS = [
    "Refunds are issued within 14 days of a returned order.",
    "Our warehouse ships orders Monday to Friday.",
    "Reset your password from the account settings page.",
    "Two-factor authentication protects your account.",
    "Invoices can be downloaded as PDF from the billing page.",
    "The cat slept on the warm windowsill all afternoon.",
    "Tomatoes grow best with plenty of sun and water.",
    "A sourdough starter needs flour, water and patience.",
    "The train to the airport leaves every fifteen minutes.",
    "Annual plans are billed once a year at a discount.",
]


def demo_phase(url: str, settings: Any, console: Any) -> bool:
    """Ingest a small corpus through a pipeline (local model) into a vector index, change it,
    sync, and search it by meaning."""
    import psycopg

    from neuron_tasks.db import make_pool
    from neuron_tasks.pipelines import create_pipeline, drop_pipeline, list_pipelines, search, sync
    from neuron_tasks.sql import q
    from neuron_tasks.vectors import store

    drop_pipeline(url, "demo_docs", drop_destination=True)
    with psycopg.connect(url, autocommit=True) as conn:
        store.drop_index(conn, "demo_docs")
        conn.execute(q("pipeline_demo_drop_table"))
        conn.execute(q("pipeline_demo_create_table"))
        conn.execute(q("pipeline_demo_fill"), {"texts": DEMO_CORPUS})
        create_pipeline(url, "demo_docs", source="demo_pipeline_docs", key="id", data="body", batch_size=4,
                        destination="index:demo_docs")
        console.print("pipeline demo_docs: public.demo_pipeline_docs.body -> vector index demo_docs (HNSW)")
        pool = make_pool(url, max_size=4, name="neuron_tasks.demo_pipeline")
        try:
            first = sync(pool, "demo_docs")
            console.print(f"backfill: {first.embedded} rows embedded in {first.batches} batches ({first.seconds:.1f}s)")
            conn.execute(q("pipeline_demo_change"))
            conn.execute(q("pipeline_demo_delete"))
            again = sync(pool, "demo_docs")
            console.print(f"catch-up: {again.embedded} embedded, {again.deleted} deleted")
            query = "how do I get my money back?"
            hits = search(pool, url, "demo_docs", query, k=3)
        finally:
            pool.close()
    console.print(f"search {query!r}:")
    for h in hits:
        console.print(f"  {h.key} ({h.score:.2f}): {h.text}")
    m = list_pipelines(url, "demo_docs")[0]
    console.print(f"pipeline_metrics: status {m['status']}, {m['count_destination_records']} vectors "
                  f"for {m['count_source_records']} rows")
    return (m["status"] == "UpToDate" and m["count_destination_records"] == len(DEMO_CORPUS) - 1
            and bool(hits) and "Refunds" in (hits[0].text or ""))
