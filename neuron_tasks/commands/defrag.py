"""`neuron-tasks defrag`: index maintenance (fragmentation, tombstone pruning, rebuilds in the
maintenance window, VACUUM/ANALYZE). `neuron-tasks index defrag NAME [--now]` runs `run_defrag`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ..cli_support import JsonOpt, console, database_url, emit, fail, jsonable

NAME = "defrag"
app = typer.Typer(help="Index maintenance: measure fragmentation (tombstones, recall drift), prune tombstones, "
                  "rebuild inside the maintenance window (or --now) without stopping search, VACUUM (ANALYZE).",
                  no_args_is_help=True)


def _client() -> Any:
    from ..vectors import Vectors, VectorSettings

    return Vectors(database_url(), settings=VectorSettings())


def run_defrag(name: str, now: bool, as_json: bool) -> None:
    """Shared by `neuron-tasks defrag run` and `neuron-tasks index defrag`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ..vectors import UnknownIndex
    from ..vectors.defrag import defrag_index
    from ..vectors.defrag_settings import DefragSettings

    client = _client()
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console,
                      disable=as_json, transient=True) as bar:
            task = bar.add_task(f"{name}: measure", total=None)

            def show(phase: str, done: int, total: int) -> None:
                bar.update(task, description=f"{name}: {phase}", completed=done, total=total or None)

            report = defrag_index(client, name, DefragSettings(), force=now, on_progress=show)
    except UnknownIndex as exc:
        fail(str(exc))
    finally:
        client.close()
    if as_json:
        print(json.dumps(jsonable(report), indent=2))
        return
    b, a = report.get("before", {}), report.get("after", {})
    console.print(f"{name}: action={report['action']}"
                  + (f" ({report['reason']})" if report.get("reason") else ""))
    if b:
        console.print(f"  before: live={b['live']} tombstones={b['deleted']} ratio={b['tombstone_ratio']:.3f} "
                      f"recall={b['recall']}")
        console.print(f"  after:  live={a['live']} tombstones={a['deleted']} ratio={a['tombstone_ratio']:.3f} "
                      f"recall={a['recall']}; pruned tombstone rows: {report['pruned_rows']}")
    if "rebuild" in report:
        r = report["rebuild"]
        console.print(f"  rebuilt {r['rows']} rows in {r['build_s']}s, replayed {r['replayed']} concurrent writes, "
                      f"graph version {r['graph_version']}")


@app.command("run")
def run_cmd(
    name: Annotated[str, typer.Argument(help="Index name.")],
    now: Annotated[bool, typer.Option("--now", help="Rebuild even outside the maintenance window.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """One maintenance pass over an index: cheap upkeep, or a rebuild when fragmented."""
    run_defrag(name, now, as_json)


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="Index name (default: all).")] = None,
    runs: Annotated[int, typer.Option(help="Recent runs to show.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Fragmentation measurements per index and recent runs with their phase and progress."""
    client = _client()
    rows = client._rows("dfg_maintenance", {"name": name})
    hist = client._rows("dfg_runs", {"name": name, "limit": runs})
    client.close()
    if as_json:
        print(json.dumps(jsonable({"indexes": rows, "runs": hist}), indent=2))
        return
    emit(rows, ["index_name", "live_count", "deleted_count", "tombstone_rows", "tombstone_ratio", "memory_ratio",
                "ef", "recall", "recall_drift", "last_maintenance", "last_action", "next_window"], as_json=False,
         title="Index maintenance")
    emit(hist, ["id", "index_name", "started_at", "finished_at", "phase", "rows_done", "rows_total", "action"],
         as_json=False, title="Defrag runs")


@app.command("vacuum")
def vacuum_cmd(as_json: JsonOpt = False) -> None:
    """VACUUM (ANALYZE) the neuron_tasks tables whose dead-tuple ratio passes the threshold."""
    from ..vectors.defrag import vacuum
    from ..vectors.defrag_settings import DefragSettings

    done = vacuum(database_url(), DefragSettings())
    if as_json:
        print(json.dumps(done))
        return
    emit(done, ["table", "dead_tuples", "dead_ratio", "seconds"], as_json=False, title="Vacuumed")
    if not done:
        console.print("no table past the dead-tuple threshold")
