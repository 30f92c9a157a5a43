"""`neuron-tasks schedules`: scheduled jobs with last and next fire, and the current leader."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from psycopg.rows import dict_row

from neuron_tasks.commandline import JsonOpt, console, emit, jsonable, pool
from neuron_tasks.sql import q

app = typer.Typer(help="Scheduled jobs (last and next fire) and scheduler nodes (which one leads).",
                  invoke_without_command=True)


def snapshot(p: Any, stale_s: float = 10.0) -> dict[str, Any]:
    with p.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        jobs = cur.execute(q("sched_jobs"), {"stale_s": stale_s}).fetchall()
        nodes = cur.execute(q("sched_nodes"), {"stale_s": stale_s}).fetchall()
    leader = next((n for n in nodes if n["is_leader"]), None)
    return {"leader": leader, "nodes": nodes, "jobs": jobs}


@app.callback(invoke_without_command=True)
def schedules(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    stale_s: Annotated[float, typer.Option(help="A node silent this long counts as gone.")] = 10.0,
) -> None:
    """List jobs with last and next fire, and the current leader."""
    if ctx.invoked_subcommand is not None:
        return
    snap = snapshot(pool(), stale_s)
    if as_json:
        print(json.dumps(jsonable(snap), indent=2))
        return
    leader = snap["leader"]
    console.print(f"leader: {leader['host']}:{leader['pid']} (node {leader['node_id']}, since "
                  f"{leader['leader_since']:%Y-%m-%d %H:%M:%S})" if leader else "leader: none (no scheduler running)")
    emit(snap["jobs"], ["name", "kind", "target", "queue_name", "trigger", "last_fire", "next_fire", "fires",
                        "last_note"], as_json=False, title="Scheduled jobs")
    emit(snap["nodes"], ["node_id", "host", "pid", "alive", "is_leader", "heartbeat_at"], as_json=False,
         title="Scheduler nodes")
