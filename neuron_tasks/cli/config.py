"""`neuron-tasks config`: every setting with its source; change live ones at runtime."""

from __future__ import annotations

import json
from typing import Annotated

import psycopg
import typer

from neuron_tasks.commandline import JsonOpt, database_url, done, emit, fail
from neuron_tasks.errors import ConfigurationError

NAME = "config"
app = typer.Typer(
    help="Settings: show every effective value and where it comes from (default < file < env < runtime); "
    "change live ones for every running process.",
    no_args_is_help=True,
)


@app.command("show")
def show(
    as_json: JsonOpt = False,
    offline: Annotated[bool, typer.Option(help="Do not read runtime values from the database.")] = False,
) -> None:
    """Every setting: value, unit, source (default, file, env, runtime), live?, description."""
    from neuron_tasks.core import runtime

    if offline:
        rows = runtime.show(None)
    else:
        with psycopg.connect(database_url(), autocommit=True) as conn:
            rows = runtime.show(conn)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    emit(rows, ["key", "value", "unit", "source", "live", "description"], as_json=False, title="Settings")


# A value may start with a minus (`config set batch_size -5`): it is then refused with the
# setting's own rule, not taken for an unknown option.
@app.command("set", context_settings={"ignore_unknown_options": True})
def set_(
    key: Annotated[str, typer.Argument(help="Setting name, e.g. batch_size.")],
    value: Annotated[str, typer.Argument(help="New value ('null' to unset an optional one).")],
    as_json: JsonOpt = False,
) -> None:
    """Change a setting for every running worker and scheduler (applied within seconds)."""
    from neuron_tasks.core import runtime

    with psycopg.connect(database_url(), autocommit=True) as conn:
        try:
            stored = runtime.set_value(conn, key, value)
        except ConfigurationError as exc:
            fail(str(exc))
    done(as_json, {"key": key, "value": stored, "source": "runtime"},
         f"{key} = {stored if stored is not None else 'null'} (runtime; running processes apply it now)")


@app.command("reset")
def reset(key: Annotated[str, typer.Argument(help="Setting name.")], as_json: JsonOpt = False) -> None:
    """Drop a runtime value: the file, environment or built-in value applies again."""
    from psycopg.rows import scalar_row

    from neuron_tasks.core import runtime
    from neuron_tasks.sql import q

    if key not in runtime.definitions():
        fail(f"unknown setting {key!r}; `neuron-tasks config show` lists them")
    with psycopg.connect(database_url(), autocommit=True) as conn, conn.cursor(row_factory=scalar_row) as cur:
        removed = bool(cur.execute(q("config_reset"), {"key": key}).fetchone())
    runtime.forget_values()
    done(as_json, {"key": key, "removed": removed},
         f"{key}: runtime value removed" if removed else f"{key}: no runtime value was set; nothing changed")
