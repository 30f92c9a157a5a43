"""`neuron-tasks index`: vector indexes (create, add, search, stats, tune, drop) and the demo phase."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    json_arg,
    jsonable,
    parse_duration,
)

if TYPE_CHECKING:
    from neuron_tasks.vectors.client import Vectors

app = typer.Typer(help="Vector indexes: HNSW graphs (hnswlib) whose vectors live in PostgreSQL; "
                  "searches are measured and an auto-tuner sets ef per index.", no_args_is_help=True)


def _client() -> Vectors:
    from neuron_tasks.vectors import Vectors, VectorSettings

    return Vectors(database_url(), settings=VectorSettings())


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Index name (letters, digits, . _ -).")],
    dim: Annotated[int, typer.Option(help="Vector dimension.")],
    space: Annotated[str, typer.Option(help="l2, ip or cosine.")] = "cosine",
    m: Annotated[int | None, typer.Option("--m", help="HNSW M (links per node).")] = None,
    ef_construction: Annotated[int | None, typer.Option(help="HNSW ef_construction.")] = None,
    ef: Annotated[int | None, typer.Option(help="Initial ef_search (the tuner moves it).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an empty index."""
    import psycopg

    try:
        row = _client().create_index(name, dim, space=space, m=m, ef_construction=ef_construction, ef_search=ef)
    except psycopg.errors.UniqueViolation:
        fail(f"index {name} already exists (to replace it: neuron-tasks index drop {name}, then create it again)")
    except (ValueError, psycopg.errors.CheckViolation) as exc:
        fail(str(exc).splitlines()[0])
    if as_json:
        print(json.dumps(jsonable(row)))
    else:
        console.print(f"created index {name}: dim={dim} space={space} M={row['m']} "
                      f"ef_construction={row['ef_construction']} ef_search={row['ef_search']}")


def read_items(file: Path, name: str, dim: int) -> list[dict[str, Any]]:
    """The JSON lines of `index add --file`, each checked before anything is written (one line on
    a bad one: its line number and what is wrong, never a traceback)."""
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{file}: cannot read it ({type(exc).__name__})")
    items: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            fail(f"{file}:{n}: not JSON ({exc.msg})")
        if not isinstance(item, dict) or "id" not in item:
            fail(f"{file}:{n}: expected an object with an \"id\"")
        key = item["id"]
        if not ((isinstance(key, int) and not isinstance(key, bool) and key >= 0)
                or (isinstance(key, str) and key.isdigit())):
            fail(f"{file}:{n}: \"id\" must be a non-negative integer")
        vector = item.get("vector")
        if vector is not None:
            if not isinstance(vector, list) or not all(
                    isinstance(x, int | float) and not isinstance(x, bool) for x in vector):
                fail(f"{file}:{n}: \"vector\" must be an array of numbers")
            if len(vector) != dim:
                fail(f"{file}:{n}: a vector of dimension {len(vector)}, but index {name} has dimension {dim}; "
                     "nothing was added")
        elif not isinstance(item.get("text"), str):
            fail(f"{file}:{n}: give a \"vector\" or a \"text\"")
        items.append(item)
    return items


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="Index name.")],
    file: Annotated[Path | None, typer.Option("--file", "-f", help="JSON lines: {\"id\": 1, \"vector\": [...], "
                                              "\"metadata\": {...}, \"text\": \"...\"} (vector or text), "
                                              "or a .npy matrix (ids 0..n-1 from --start-id).")] = None,
    random_n: Annotated[int, typer.Option("--random", help="Add N random vectors instead (for trying it).")] = 0,
    start_id: Annotated[int, typer.Option(help="First id for --random / .npy rows.")] = 0,
    batch: Annotated[int, typer.Option(help="Items per write transaction.")] = 2000,
    save: Annotated[bool, typer.Option(help="Save a graph snapshot at the end.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Add (or replace) items; texts without vectors are embedded by the LLM provider."""
    import numpy as np
    from rich.progress import Progress

    client = _client()
    dim = client.info(name)["dim"]
    items: list[dict[str, Any]] = []
    mat = None
    if file is not None and file.suffix == ".npy":
        try:
            mat = np.load(file).astype(np.float32)
        except (OSError, ValueError) as exc:
            fail(f"{file}: not a readable .npy matrix ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
        if mat.ndim != 2 or mat.shape[1] != dim:
            got = f"dimension {mat.shape[1]}" if mat.ndim == 2 else f"shape {mat.shape}"
            fail(f"{file}: vectors of {got}, but index {name} has dimension {dim}; nothing was added")
    elif file is not None:
        items = read_items(file, name, dim)
    elif random_n:
        mat = np.random.default_rng().normal(size=(random_n, dim)).astype(np.float32)
    else:
        fail("give --file or --random N")
    total = len(mat) if mat is not None else len(items)
    try:
        with Progress(console=console, disable=as_json) as progress:
            task = progress.add_task(f"adding to {name}", total=total)
            for start in range(0, total, batch):
                if mat is not None:
                    chunk = mat[start:start + batch]
                    client.add(name, range(start_id + start, start_id + start + len(chunk)), chunk)
                else:
                    part = items[start:start + batch]
                    ids = [int(it["id"]) for it in part]
                    texts = [it.get("text") for it in part]
                    if all("vector" in it for it in part):
                        vecs = np.asarray([it["vector"] for it in part], dtype=np.float32)
                    else:
                        from neuron_tasks.vectors.embed import embed_texts

                        vecs = embed_texts(client.pool, [str(t) for t in texts])
                    client.add(name, ids, vecs, metadata=[it.get("metadata") for it in part], texts=texts)
                progress.advance(task, min(batch, total - start))
    except ValueError as exc:  # e.g. embedded texts of another dimension, NaN in a vector
        fail(f"index {name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    snap = client.save(name) if save else None
    client.close()
    if as_json:
        print(json.dumps(jsonable({"index": name, "added": total, "snapshot": snap})))
    elif snap:
        console.print(f"snapshot saved at seq {snap['seq']} ({snap['bytes'] / 1e6:.1f} MB, {snap['live']} live)")


@app.command()
def search(
    name: Annotated[str, typer.Argument(help="Index name.")],
    vector: Annotated[str | None, typer.Option(help="Query vector as a JSON array.")] = None,
    text: Annotated[str | None, typer.Option(help="Query text (embedded; with --hybrid also full-text).")] = None,
    k: Annotated[int, typer.Option("-k", help="Results.")] = 10,
    ef: Annotated[int | None, typer.Option(help="ef for this search (default: the tuned ef).")] = None,
    filter_: Annotated[str | None, typer.Option("--filter", help="JSON the metadata must contain.")] = None,
    hybrid: Annotated[bool, typer.Option(help="Vector + full-text rank (needs --text).")] = False,
    alpha: Annotated[float | None, typer.Option(help="Hybrid weight of the vector score.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Nearest items to a vector or a text."""
    if vector is None and text is None:
        fail("give --vector JSON or --text")
    client = _client()
    flt = json_arg(filter_, "--filter", dict) if filter_ else None
    vec = json_arg(vector, "--vector", list) if vector else None
    if hybrid:
        if text is None:
            fail("--hybrid needs --text")
        res = client.hybrid_search(name, text, k, vector=vec, alpha=alpha, ef=ef, filter=flt, include_metadata=True)
    else:
        res = client.search(name, vec if vec is not None else text, k, ef, flt, include_metadata=True)
    client.close()
    rows = [{"id": h.id, "distance": h.distance, "score": h.score, "metadata": h.metadata, "text": h.text}
            for h in res.hits]
    if as_json:
        print(json.dumps(jsonable({"query_id": str(res.query_id), "ef": res.ef, "latency_ms": res.latency_ms,
                                   "alpha": res.alpha, "hits": rows})))
        return
    emit(rows, ["id", "distance", "score", "metadata", "text"], as_json=False,
         title=f"{name}: k={k} ef={res.ef} {res.latency_ms:.2f} ms  query {res.query_id}")


@app.command()
def stats(
    name: Annotated[str | None, typer.Argument(help="Index name (default: all).")] = None,
    window: Annotated[str, typer.Option(help="Window for percentiles and recall (90s, 15m, 2h).")] = "10m",
    decisions: Annotated[int, typer.Option(help="Recent tuner decisions to show.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Counters, ef/alpha, P50/P90/P95/P99 latency and recall@10/@100 over a window, tuner decisions."""
    client = _client()
    rows = client.stats(name, parse_duration(window) or 600)
    hist = client.rows("vec_decisions", {"name": name, "limit": decisions})
    # Defrag runs, with the progress of one in flight (rows done / total, phase); none while the
    # defrag table is not installed.
    runs = client.rows("dfg_runs", {"name": name, "limit": 3}) if _has_defrag(client) else []
    client.close()
    if as_json:
        print(json.dumps(jsonable({"indexes": rows, "decisions": hist, "defrag_runs": runs}), indent=2))
        return
    emit(rows, ["name", "dim", "space", "live_count", "deleted_count", "ef_search", "alpha", "queries", "p50_ms",
                "p95_ms", "p99_ms", "recall_at_10", "recall_at_100", "alert"], as_json=False,
         title=f"Vector indexes (last {window})")
    emit(hist, ["at", "index_name", "parameter", "strategy", "old_value", "new_value", "recall", "p95_ms",
                "evaluations", "alert", "reason"], as_json=False, title="Tuner decisions")
    if runs:
        emit(runs, ["index_name", "phase", "rows_done", "rows_total", "action", "forced", "started_at",
                    "finished_at"], as_json=False, title="Defrag runs (progress)")


def _has_defrag(client: Vectors) -> bool:
    from psycopg.rows import scalar_row

    from neuron_tasks.sql import q

    with client.pool.connection() as conn, conn.cursor(row_factory=scalar_row) as cur:
        return bool(cur.execute(q("dfg_installed")).fetchone())


@app.command()
def tune(
    name: Annotated[str, typer.Argument(help="Index name.")],
    strategy: Annotated[str | None, typer.Option(help="search or step (default: the index's).")] = None,
    target_recall: Annotated[float | None, typer.Option(help="Set this index's recall target.")] = None,
    target_latency_ms: Annotated[float | None, typer.Option(help="Set this index's p95 target (ms).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run one tuning cycle now (the scheduler does it every naptime); optionally set per-index targets."""
    from dataclasses import asdict

    from neuron_tasks.sql import q
    from neuron_tasks.vectors.tuner import tune_alpha, tune_index

    client = _client()
    if target_recall is not None or target_latency_ms is not None:
        info = client.info(name)
        with client.pool.connection() as conn:
            conn.execute(q("vec_set_options"), {
                "name": name, "target_recall": target_recall or info["target_recall"],
                "target_latency_ms": target_latency_ms or info["target_latency_ms"],
                "tuner_strategy": info["tuner_strategy"], "tuner_enabled": info["tuner_enabled"]})
    d = tune_index(client, name, strategy=strategy)
    alpha = tune_alpha(client, name)
    client.close()
    out = {**{k: v for k, v in asdict(d).items() if k != "candidates"}, "alpha": alpha}
    if as_json:
        print(json.dumps(jsonable(out), indent=2))
        return
    console.print(f"{name}: ef {d.old_ef} -> {d.new_ef} ({d.reason}); {d.evaluations} ef values measured on "
                  f"{d.samples} sampled queries" + (f"; [red]alert: {d.alert}[/]" if d.alert else ""))


@app.command()
def drop(name: Annotated[str, typer.Argument(help="Index name.")], yes: YesOpt = False,
         as_json: JsonOpt = False) -> None:
    """Delete an index, its vectors, snapshot, metrics and decisions."""
    from neuron_tasks.vectors import UnknownIndex

    client = _client()
    try:
        client.info(name)
    except UnknownIndex:
        fail(f"no index {name!r}")
    confirm_destructive(f"drop index {name} with all its vectors, snapshot and metrics", yes=yes)
    if not client.drop_index(name):
        fail(f"no index {name!r}")
    done(as_json, {"dropped": "index", "name": name}, f"dropped index {name}")


@app.command()
def defrag(
    name: Annotated[str, typer.Argument(help="Index name.")],
    now: Annotated[bool, typer.Option("--now", help="Rebuild even outside the maintenance window.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Index maintenance now: prune tombstones, or rebuild when fragmented (see `neuron-tasks defrag`)."""
    from neuron_tasks.vectors.defrag_commands import run_defrag

    run_defrag(name, now, as_json)


def demo_phase(url: str, settings: Any, console: Any) -> bool:
    from neuron_tasks.vectors.demo import run_demo

    return run_demo(url, console)
