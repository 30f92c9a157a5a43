"""`neuron-tasks messages`: act on single messages (cancel)."""

from __future__ import annotations

from typing import Annotated

import psycopg
import typer

from neuron_tasks.commandline import JsonOpt, done, fail, repo

NAME = "messages"
app = typer.Typer(help="Single messages: cancel them.", no_args_is_help=True)


def database_error(exc: psycopg.Error) -> str:
    """One line from a refused statement: its message without the function's name, and its hint."""
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return f"{exc.diag.message_primary or exc}: cancelling and purging need the neuron_tasks_admin role"
    text = str(exc.diag.message_primary or exc)
    if text.startswith("neuron_tasks.") and ": " in text:
        text = text.split(": ", 1)[1]
    hint = exc.diag.message_hint
    return f"{text} ({hint})" if hint else text


@app.command("cancel")
def cancel(
    ids: Annotated[list[str], typer.Argument(help="Message ids (or row ids) of waiting or running messages.")],
    as_json: JsonOpt = False,
) -> None:
    """Cancel messages. A waiting one (pending, retrying) leaves the queue at once; a running one is
    marked: its job can ask `neuron_tasks.cancelled()`, and however it ends it is recorded as cancelled
    and never runs again (nothing is killed half-way). All or nothing: an id that names no waiting or
    running message is refused, and then nothing is cancelled."""
    try:
        counts = repo().cancel(list(dict.fromkeys(ids)))
    except psycopg.Error as exc:
        fail(database_error(exc))
    text = f"cancelled {counts['cancelled']} waiting message(s)"
    if counts["marked"]:
        text += f"; marked {counts['marked']} running message(s) as cancelled (their jobs are told when they ask)"
    done(as_json, counts, text)
