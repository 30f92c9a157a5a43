"""`neuron-tasks topics`: cluster-wide concurrency, retries, delay and priority per topic."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from neuron_tasks.commandline import JsonOpt, YesOpt, confirm_destructive, console, done, emit, fail, jsonable, pool
from neuron_tasks.errors import InvalidOption

NAME = "topics"
app = typer.Typer(help="Topics: concurrency, retries, delay and priority limits that hold across all workers.",
                  no_args_is_help=True)


@app.command("set")
def set_(
    name: Annotated[str, typer.Argument(help="Topic name (the `topic` message option).")],
    concurrency: Annotated[int | None, typer.Option(help="Max tasks running at once, cluster-wide.")] = None,
    retries: Annotated[int | None, typer.Option(help="max_retries of its messages (message option wins).")] = None,
    delay_s: Annotated[float | None, typer.Option("--delay-s", help="Seconds between task starts.")] = None,
    priority: Annotated[int | None, typer.Option(help="Default priority of its messages (lower first).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create or change a topic."""
    from neuron_tasks.core.topics import set_topic, topics

    p = pool()
    try:
        set_topic(p, name, concurrency=concurrency, max_retries=retries, delay_s=delay_s, priority=priority)
    except InvalidOption as exc:
        fail(str(exc))
    row = next(t for t in topics(p) if t["name"] == name)
    if as_json:
        print(json.dumps(jsonable(row)))
    else:
        console.print(f"topic {name}: concurrency={row['concurrency']} retries={row['max_retries']} "
                      f"delay={row['delay_s']}s priority={row['priority']}")


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Every topic with its settings, running and waiting counts."""
    from neuron_tasks.core.topics import topics

    emit(topics(pool()), ["name", "concurrency", "max_retries", "delay_s", "priority", "running", "waiting"],
         as_json=as_json, title="Topics")


@app.command("delete")
def delete(name: str, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Remove a topic (messages naming it are then refused at enqueue)."""
    from neuron_tasks.core.topics import delete_topic, topics

    p = pool()
    if not any(t["name"] == name for t in topics(p)):
        fail(f"no topic {name!r}")
    confirm_destructive(f"delete topic {name} with its settings", yes=yes)
    if not delete_topic(p, name):
        fail(f"no topic {name!r}")
    done(as_json, {"deleted": "topic", "name": name}, f"deleted topic {name}")
