"""Helpers shared by every `neuron-tasks` command group: settings, database, output."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from psycopg_pool import ConnectionPool
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from neuron_tasks import db, embedded
from neuron_tasks.config import Settings
from neuron_tasks.core import migrate

if TYPE_CHECKING:
    from neuron_tasks.core.admin import Repo

console = Console()
err = Console(stderr=True, soft_wrap=True)  # error lines stay whole for scripts and logs

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed when not run from "
                                      "a terminal).")]


class State:
    database_url: str | None = None
    settings: Settings | None = None


state = State()


def settings() -> Settings:
    if state.settings is None:
        try:
            state.settings = Settings(database_url=state.database_url) if state.database_url else Settings()
        except ValidationError as exc:
            fail(f"invalid settings: {exc}")
    return state.settings


def database_url(*, check_schema: bool = True) -> str:
    """The URL (embedded server started when none is set, said on stderr), exported for child
    processes. With `check_schema`, a database without every migration applied is refused with one
    line naming `neuron-tasks db upgrade`: no command but that one changes the schema."""
    config = settings()
    if not config.database_url:
        where = (config.embedded_dir or embedded.default_data_dir()).expanduser().resolve()
        err.print(f"note: {db.URL_ENV} is not set: using the embedded PostgreSQL, its data in {where}",
                  highlight=False, markup=False)
    url = db.resolve_url(config, export=True)
    check_reachable(url)
    if check_schema:
        check_current(url)
    return url


def check_current(url: str) -> None:
    """Fail with one line naming `neuron-tasks db upgrade` when a migration is not applied. A role
    that may not read the record of migrations (a producer) is not checked: its statements say."""
    import psycopg

    try:
        problem = migrate.outdated(migrate.pending(url))
    except psycopg.errors.InsufficientPrivilege:
        return
    if problem:
        fail(problem)


CONNECT_TIMEOUT_S = 5


def check_reachable(url: str) -> None:
    """Fail with one line naming host and port when PostgreSQL cannot be reached or refuses us."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S).close()
    except psycopg.Error as exc:
        try:
            info = conninfo_to_dict(url)
        except psycopg.Error:
            info = {}
        where = f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        fail(f"cannot connect to PostgreSQL at {where}: {reason}")


def print_error(message: str) -> None:
    """One line on stderr: `error: message`, the message printed as is (no markup: [brackets] stay)."""
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    print_error(message)
    raise typer.Exit(code)


def confirm_destructive(what: str, *, yes: bool) -> None:
    """Ask before deleting `what` on a terminal (default no); elsewhere require --yes (exit 2 without it)."""
    if yes:
        return
    if sys.stdin.isatty():
        typer.confirm(f"{what[:1].upper()}{what[1:]}?", default=False, abort=True)
        return
    fail(f"this would {what}; pass --yes to confirm (no terminal to ask on)", code=2)


def done(as_json: bool, result: dict[str, Any], text: str) -> None:
    """What a command did: `result` as one JSON object with --json, else `text`."""
    if as_json:
        print(json.dumps(jsonable(result)))
    else:
        console.print(text, highlight=False, markup=False)


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def emit(rows: list[dict[str, Any]], columns: list[str], *, as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(jsonable(rows), indent=2))
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(cell(row.get(col)) for col in columns))
    if not rows:
        table.caption = "(none)"
    console.print(table)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


def parse_duration(text: str | None) -> float | None:
    """'90', '90s', '15m', '2h', '7d' -> seconds."""
    if text is None:
        return None
    match = _DURATION.match(text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 90s, 15m, 2h or 7d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def json_arg(text: str, what: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise typer.BadParameter(f"{what} must be a JSON {'array' if kind is list else 'object'}")
    return value


def pool() -> ConnectionPool:
    """A small pool on the configured (or embedded) database, its schema checked."""
    return db.make_pool(database_url(), max_size=2, name="neuron_tasks-cli")


def repo(*, read: bool = False) -> Repo:
    """The admin queries on the primary; with `read`, on NEURON_TASKS_READ_URL's replica when set
    (reads that tolerate lag: status)."""
    from neuron_tasks.core.admin import Repo

    read_url = settings().read_url if read else None
    if read_url:
        return Repo(db.make_pool(read_url, max_size=2, name="neuron_tasks-cli-read", read_only=True))
    return Repo(pool())
