"""`neuron-tasks defrag`: index maintenance (fragmentation, tombstone pruning, rebuilds in the
maintenance window, VACUUM/ANALYZE). `neuron-tasks index defrag NAME [--now]` runs `run_defrag`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from neuron_tasks.commandline import JsonOpt, console, database_url, emit, fail, jsonable

if TYPE_CHECKING:
    from neuron_tasks.vectors.client import Vectors

app = typer.Typer(help="Index maintenance: measure fragmentation (tombstones, recall drift), prune tombstones, "
                  "rebuild inside the maintenance window (or --now) without stopping search, VACUUM (ANALYZE).",
                  no_args_is_help=True)


def _client() -> Vectors:
    from neuron_tasks.vectors import Vectors, VectorSettings

    return Vectors(database_url(), settings=VectorSettings())


def run_defrag(name: str, now: bool, as_json: bool) -> None:
    """Shared by `neuron-tasks defrag run` and `neuron-tasks index defrag`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from neuron_tasks.vectors import UnknownIndex
    from neuron_tasks.vectors.defrag import defrag_index
    from neuron_tasks.vectors.defrag_settings import DefragSettings

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
    rows = client.rows("dfg_maintenance", {"name": name})
    hist = client.rows("dfg_runs", {"name": name, "limit": runs})
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
    from neuron_tasks.vectors.defrag import vacuum
    from neuron_tasks.vectors.defrag_settings import DefragSettings

    done = vacuum(database_url(), DefragSettings())
    if as_json:
        print(json.dumps(done))
        return
    emit(done, ["table", "dead_tuples", "dead_ratio", "seconds"], as_json=False, title="Vacuumed")
    if not done:
        console.print("no table past the dead-tuple threshold")


def demo_phase(url: str, settings: Any, console: Any) -> bool:
    """Churn an index (delete 60%, insert 20% new), measure, refuse outside the window, rebuild
    with --now while another client keeps searching, measure again."""
    import threading
    from datetime import UTC, datetime

    from rich.table import Table

    from neuron_tasks.vectors import Vectors, VectorSettings
    from neuron_tasks.vectors.defrag import adopt, defrag_index, measure
    from neuron_tasks.vectors.defrag_settings import DefragSettings
    from neuron_tasks.vectors.demo import clustered

    name, n, dim = "demo_defrag", 20_000, 32
    vs = VectorSettings(database_url=url, vectors_sample_rate=0.0, vectors_sync_s=0.2)
    v, searcher = Vectors(url, settings=vs), Vectors(url, settings=vs)
    ds = DefragSettings(database_url=url, defrag_tombstone_grace_s=0, defrag_probe_queries=200)
    noon = datetime.now(UTC).replace(hour=12)  # outside the 02:00-04:00 window
    try:
        if any(i["name"] == name for i in v.indexes()):
            v.drop_index(name)
        x = clustered(n + n // 5, dim, rng_seed=3)
        v.create_index(name, dim=dim, space="l2", m=8, ef_construction=64, ef_search=12)
        for s in range(0, n, 5000):
            v.add(name, range(s, s + 5000), x[s:s + 5000])
        v.save(name)
        rows = [("built", measure(v, name, ds, now=noon))]
        v.delete(name, [i for i in range(n) if i % 5 < 3])
        v.add(name, range(n, n + n // 5), x[n:])
        rows.append(("after churn (60% deleted, 20% new)", measure(v, name, ds, now=noon)))
        refused = defrag_index(v, name, ds, now=noon)
        console.print(f"scheduled pass at 12:00: {refused['action']} ({refused.get('reason', '')})")
        adopt(searcher, name)
        searcher.state(name)
        failed, short, count, stop = [0], [0], [0], threading.Event()

        def search() -> None:
            q = clustered(200, dim, rng_seed=4)
            while not stop.is_set():
                try:
                    short[0] += len(searcher.search(name, q[count[0] % 200], k=10, record=False).ids) < 10
                except Exception:
                    failed[0] += 1
                count[0] += 1

        t = threading.Thread(target=search, daemon=True)
        t.start()
        report = defrag_index(v, name, ds, force=True, now=noon)
        stop.set()
        t.join()
        swapped = adopt(searcher, name)
        rows.append(("after `index defrag --now`", measure(v, name, ds, now=noon)))
        table = Table(title=f"{name}: {n} x {dim}, M=8, ef=12")
        for col in ("state", "live", "tombstones", "ratio", "memory vs fresh", "recall@10"):
            table.add_column(col)
        for label, m in rows:
            table.add_row(label, str(m.live), str(m.deleted), f"{m.tombstone_ratio:.2f}", f"{m.memory_ratio:.2f}",
                          f"{m.recall:.3f}" if m.recall is not None else "-")
        console.print(table)
        r = report["rebuild"]
        console.print(f"rebuild: {r['rows']} rows in {r['build_s']}s, {r['replayed']} writes replayed; another "
                      f"client searched {count[0]} times meanwhile: {failed[0]} failed, {short[0]} short; "
                      f"it swapped to graph version {r['graph_version']}: {swapped}")
        after, churn = rows[2][1], rows[1][1]
        return (report["action"] == "rebuild" and failed[0] == 0 and short[0] == 0 and after.deleted == 0
                and (after.recall or 0) >= (churn.recall or 0) - 0.005)
    finally:
        v.drop_index(name)
        v.close()
        searcher.close()
