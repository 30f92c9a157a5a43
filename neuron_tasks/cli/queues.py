"""`neuron-tasks queues`: act on whole queues (purge)."""

from __future__ import annotations

from typing import Annotated

import psycopg
import typer

from neuron_tasks.cli.messages import database_error
from neuron_tasks.commandline import JsonOpt, YesOpt, confirm_destructive, done, fail, repo
from neuron_tasks.core.admin import PURGE_STATES, WAITING_STATES

NAME = "queues"
app = typer.Typer(help="Whole queues: purge their waiting messages.", no_args_is_help=True)


@app.command("purge")
def purge(
    queue: Annotated[str, typer.Argument(help="The queue to purge.")],
    actor: Annotated[str | None, typer.Option("--actor", help="Only this actor's messages.")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's messages.")] = None,
    states: Annotated[list[str] | None, typer.Option(
        "--state", help="Only messages in this state (repeat): pending, retrying (the default: both), "
                        "failed (dead letters), running (marked as cancelled, never stopped half-way).")] = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete the waiting messages of a queue (pending and retrying; none that is running unless
    --state running names them, and those are only marked as cancelled). Purged messages leave no
    history. Asks first on a terminal; elsewhere needs --yes."""
    chosen = list(dict.fromkeys(states or WAITING_STATES))
    unknown = [s for s in chosen if s not in PURGE_STATES]
    if unknown:
        raise typer.BadParameter(f"unknown state {', '.join(unknown)}; states are {', '.join(PURGE_STATES)}",
                                 param_hint="--state")
    r = repo()
    scope = f"queue {queue}" + (f", actor {actor}" if actor else "") + (f", tenant {tenant}" if tenant else "")
    try:
        if not yes:
            count = r.purge_count(queue, actor=actor, tenant=tenant, states=chosen)
            what = "delete or mark as cancelled" if "running" in chosen else "delete"
            confirm_destructive(f"{what} {count} {'/'.join(chosen)} message(s) of {scope}", yes=yes)
        counts = r.purge_queue(queue, actor=actor, tenant=tenant, states=chosen)
    except psycopg.Error as exc:
        fail(database_error(exc))
    text = f"purged {counts['purged']} message(s) of {scope}"
    if "running" in chosen:
        text += f"; marked {counts['marked']} running message(s) as cancelled"
    done(as_json, {"queue": queue, **counts}, text)
