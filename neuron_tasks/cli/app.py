"""`neuron-tasks`: migrate, run workers, enqueue, inspect queues and dead letters, demo."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated, Any

import typer

from neuron_tasks import db
from neuron_tasks.commandline import (
    JsonOpt,
    YesOpt,
    cell,
    confirm_destructive,
    console,
    database_url,
    emit,
    err,
    fail,
    json_arg,
    jsonable,
    parse_duration,
    print_error,
    repo,
    settings,
    state,
)
from neuron_tasks.core import migrate
from neuron_tasks.errors import NeuronTasksError


def _flags_show_no_type() -> None:
    """In --help, an on/off flag (--json, --yes, --all...) shows no `<bool>` value: it takes none."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "flags_quiet", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if self.is_flag and self.metavar is None:
            return None
        return shown(self, ctx)

    display_type_rich.flags_quiet = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_type()

app = typer.Typer(
    help="neuron_tasks: background jobs on Dramatiq with PostgreSQL as the broker.\n\n"
    "With no NEURON_TASKS_DATABASE_URL an embedded PostgreSQL is started for you.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
dl_app = typer.Typer(help="Dead letters: messages that failed for good.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(dl_app, name="dead-letters")


def _print_version(value: bool) -> None:
    if value:
        from neuron_tasks import __version__

        print(f"neuron-tasks {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    database_url: Annotated[
        str | None, typer.Option("--database-url", envvar="NEURON_TASKS_DATABASE_URL", help="PostgreSQL URL.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="Print the version and exit.")] = False,
) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    state.database_url = database_url



# -- db ---------------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade(as_json: JsonOpt = False) -> None:
    """Apply pending migrations from schema/ (idempotent; safe to run from two processes at once)."""
    url = database_url(check_schema=False)
    applied = migrate.upgrade(url)
    names = [f"{m.version:03d}_{m.name}" for m in applied]
    if as_json:
        print(json.dumps({"applied": names, "database": db.redact(url)}))
    elif names:
        console.print(f"applied {len(names)} migration(s): {', '.join(names)}")
    else:
        console.print("schema is up to date")


@db_app.command("status")
def db_status(as_json: JsonOpt = False) -> None:
    """Show the database in use and any pending migrations."""
    url = database_url(check_schema=False)
    waiting = [f"{m.version:03d}_{m.name}" for m in migrate.pending(url)]
    if as_json:
        print(json.dumps({"database": db.redact(url), "pending": waiting}))
    else:
        console.print(f"database: {db.redact(url)}")
        console.print(f"pending migrations: {', '.join(waiting) or 'none'}")


# -- worker -----------------------------------------------------------------------------------
@app.command()
def worker(
    modules: Annotated[list[str] | None, typer.Argument(
        help="Your own modules that declare actors (every part's actors load by themselves).")] = None,
    processes: Annotated[int, typer.Option("--processes", "-p", min=1, help="Worker processes.")] = 1,
    threads: Annotated[int, typer.Option("--threads", "-t", min=1, help="Threads per process.")] = 8,
    queues: Annotated[list[str] | None, typer.Option("--queues", "-Q", help="Only these queues (repeat).")] = None,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", help="Serve Prometheus /metrics on 127.0.0.1:PORT, or on the next "
                          "free port of the ten from PORT up (one per supervisor on a host); 0 = off.")
    ] = 9191,
    metrics_host: Annotated[str, typer.Option("--metrics-host", help="Address /metrics binds to.")] = "127.0.0.1",
) -> None:
    """Run worker processes; a child that dies is restarted; SIGTERM drains gracefully.

    Every installed part's actors load automatically in each worker; MODULES are your own.
    The supervisor renews its children's leases, returns a dead child's messages at once, and
    replaces a child whose job outlives its time limit by hard_timeout_grace_s.
    """
    from neuron_tasks.worker.supervisor import Supervisor, python_command

    for module in modules or []:
        _check_importable(module)
    url = database_url()
    on_exit = None
    metrics_dir = None
    if metrics_port:
        from neuron_tasks.worker import exporter

        metrics_dir = exporter.prepare_multiproc_dir()
        try:
            port = exporter.serve(metrics_port, url, metrics_host)
            taken = "" if port == metrics_port else f" ({metrics_port} is in use: another supervisor on this host?)"
            console.print(f"metrics on http://{metrics_host}:{port}/metrics{taken}", highlight=False)
        except OSError as exc:
            # Every port of the range is taken: run without metrics rather than not at all.
            err.print(f"[yellow]warning:[/] no /metrics ({exc}); pass --metrics-port to choose a free port")
        on_exit = exporter.child_died
    level = logging.getLevelName(logging.getLogger().level)
    logging.getLogger("neuron_tasks").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:  # restarts and kills are read with their time
        handler.setFormatter(logging.Formatter("%(asctime)s [supervisor] %(levelname)s %(name)s: %(message)s"))

    def command(index: int) -> list[str]:
        args = ["-m", "neuron_tasks.worker.process", *(modules or []), "--threads", str(threads)]
        args += ["--index", str(index), "--log-level", "INFO" if level == "WARNING" else level, "--supervised"]
        if queues:
            args += ["--queues", *queues]
        return python_command(*args)

    console.print(
        f"starting {processes} worker process(es) x {threads} threads on {db.redact(os.environ[db.URL_ENV])}"
    )
    sup = Supervisor(command, processes, shutdown_timeout_s=settings().shutdown_timeout_s, env=dict(os.environ),
                     on_child_exit=on_exit, url=url, settings=settings())
    code = sup.run()
    if metrics_dir:
        from neuron_tasks.worker import exporter

        exporter.cleanup(metrics_dir)
    raise typer.Exit(code)


def _check_importable(module: str) -> None:
    """Fail with one line when an actor module cannot be found (workers import it from this directory)."""
    import importlib.util

    sys.path.insert(0, os.getcwd())
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    finally:
        sys.path.remove(os.getcwd())
    if not found:
        fail(f"cannot import actor module {module!r}: no such module here or on PYTHONPATH")


# -- enqueue ----------------------------------------------------------------------------------
@app.command()
def enqueue(
    actor: Annotated[str, typer.Argument(help="Actor name, as declared with @dramatiq.actor.")],
    args: Annotated[str, typer.Option("--args", help="Positional arguments as a JSON array.")] = "[]",
    kwargs: Annotated[str, typer.Option("--kwargs", help="Keyword arguments as a JSON object.")] = "{}",
    queue: Annotated[str, typer.Option("--queue", "-q", help="Queue name.")] = "default",
    tenant: Annotated[str | None, typer.Option(help="Tenant the job runs for.")] = None,
    topic: Annotated[str | None, typer.Option(help="Topic of the job.")] = None,
    priority: Annotated[int | None, typer.Option(help="Lower runs first (default 0).")] = None,
    delay: Annotated[int | None, typer.Option(help="Milliseconds before it may run.", min=0)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Enqueue one message by actor name (through SQL, as an application could).

    Checked first by the rules every enqueue applies (neuron_tasks.core.options), so a bad value
    is refused with the same words as from Python; SQL enqueue then checks them again."""
    import psycopg
    from psycopg.rows import scalar_row
    from psycopg.types.json import Jsonb

    from neuron_tasks.core.options import check_actor_name, check_options, check_payload, check_queue_name
    from neuron_tasks.errors import InvalidOption
    from neuron_tasks.sql import q

    options = {k: v for k, v in {"tenant": tenant, "topic": topic, "priority": priority, "delay": delay}.items()
               if v is not None}
    parsed_args, parsed_kwargs = json_arg(args, "--args", list), json_arg(kwargs, "--kwargs", dict)
    try:
        check_queue_name(queue)
        check_actor_name(actor)
        check_payload(parsed_args, parsed_kwargs)
        check_options(options)
    except InvalidOption as exc:
        fail(str(exc))
    params = {"queue": queue, "actor": actor, "args": Jsonb(parsed_args), "kwargs": Jsonb(parsed_kwargs),
              "options": Jsonb(options)}
    message_id = None
    with psycopg.connect(database_url(), autocommit=True) as conn, conn.cursor(row_factory=scalar_row) as cur:
        try:
            message_id = cur.execute(q("cli_enqueue"), params).fetchone()
        except psycopg.Error as exc:
            hint = f" ({exc.diag.message_hint})" if exc.diag.message_hint else ""
            fail(str(exc.diag.message_primary or exc) + hint)
    if as_json:
        print(json.dumps({"message_id": message_id, "queue": queue, "actor": actor}))
    else:
        console.print(f"enqueued {actor} on {queue}: {message_id}")


# -- status -----------------------------------------------------------------------------------
@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Per queue: pending, running, retrying, failed (dead letters), finished, cancelled; and workers."""
    r = repo(read=True)
    queues = r.queue_status()
    workers = r.workers()
    if as_json:
        print(json.dumps(jsonable({"queues": queues, "workers": workers}), indent=2))
        return
    emit(queues, ["queue", "pending", "running", "retrying", "failed", "finished", "cancelled", "finished_last_hour",
                  "oldest_pending"], as_json=False, title="Queues")
    emit(workers, ["worker_name", "status", "queues", "jobs_processed", "jobs_failed", "avg_runtime_ms",
                   "heartbeat_age_s"], as_json=False, title="Workers")


# -- dead letters -----------------------------------------------------------------------------
QueueOpt = Annotated[str | None, typer.Option("--queue", "-q", help="Only this queue.")]
ActorOpt = Annotated[str | None, typer.Option("--actor", help="Only this actor.")]
TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Only this tenant.")]
AgeOpt = Annotated[str | None, typer.Option("--older-than", help="Only older than this (90s, 15m, 2h, 7d).")]


@dl_app.command("list")
def dl_list(queue: QueueOpt = None, actor: ActorOpt = None, tenant: TenantOpt = None, older_than: AgeOpt = None,
            limit: Annotated[int, typer.Option(min=1)] = 50, as_json: JsonOpt = False) -> None:
    """List dead letters, newest first."""
    rows = repo().dead_letters(queue=queue, actor=actor, tenant=tenant, older_than_s=parse_duration(older_than),
                               limit=limit)
    emit(rows, ["id", "message_id", "queue_name", "actor_name", "tenant", "retries", "failed_at", "last_error"],
         as_json=as_json, title="Dead letters")


@dl_app.command("show")
def dl_show(key: Annotated[str, typer.Argument(help="Row id or message id.")], as_json: JsonOpt = False) -> None:
    """Show one message: options, every attempt's error and traceback."""
    row = repo().message(key)
    if row is None:
        fail(f"no message {key!r} (finished messages leave the table; see `status`)")
        return
    payload = bytes(row.pop("payload"))
    try:
        row["message"] = json.loads(payload)
    except ValueError:
        row["message"] = payload.decode("utf-8", "replace")
    if as_json:
        print(json.dumps(jsonable(row), indent=2))
        return
    for key_ in ("id", "message_id", "queue_name", "actor_name", "state", "tenant", "priority", "attempts",
                 "retries", "deaths", "enqueued_at", "failed_at", "last_error"):
        console.print(f"[bold]{key_}[/]: {cell(row.get(key_))}", highlight=False)
    console.print("[bold]message[/]:", json.dumps(jsonable(row["message"]), indent=2)[:4000], highlight=False)
    for entry in row.get("errors") or []:
        console.print(f"\n[bold]attempt {entry.get('attempt')}[/] {entry.get('type')}: {entry.get('message')}",
                      highlight=False)
        if entry.get("traceback"):
            console.print(entry["traceback"], highlight=False, markup=False)


@dl_app.command("requeue")
def dl_requeue(keys: Annotated[list[str] | None, typer.Argument(help="Row ids or message ids.")] = None,
               all_: Annotated[bool, typer.Option("--all", help="Every dead letter matching the filters.")] = False,
               queue: QueueOpt = None, actor: ActorOpt = None, tenant: TenantOpt = None,
               older_than: AgeOpt = None, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Put dead letters back in their queue with attempts and retries reset."""
    r = repo()
    if all_:
        keys = r.dead_letter_keys(queue=queue, actor=actor, tenant=tenant, older_than_s=parse_duration(older_than))
        if keys:
            confirm_destructive(f"requeue {len(keys)} dead letter(s) of {_scope(queue, actor, tenant, older_than)}",
                                yes=yes)
    if not keys:
        if all_:
            fail(f"no dead letters of {_scope(queue, actor, tenant, older_than)} to requeue")
        fail("name dead letters to requeue, or pass --all (with optional filters)")
        return
    done = r.requeue(list(keys))
    if as_json:
        print(json.dumps({"requeued": done}))
    else:
        console.print(f"requeued {len(done)} message(s)")


def _scope(queue: str | None, actor: str | None = None, tenant: str | None = None,
           older_than: str | None = None) -> str:
    parts = [f"queue {queue}" if queue else "all queues"]
    parts += [f"actor {actor}"] if actor else []
    parts += [f"tenant {tenant}"] if tenant else []
    parts += [f"older than {older_than}"] if older_than else []
    return ", ".join(parts)


@dl_app.command("purge")
def dl_purge(queue: QueueOpt = None, older_than: AgeOpt = None,
             yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Delete dead letters (all, or of one queue, or older than an age)."""
    age = parse_duration(older_than)
    r = repo()
    if not yes:
        count = len(r.dead_letter_keys(queue=queue, actor=None, tenant=None, older_than_s=age))
        confirm_destructive(f"delete {count} dead letter(s) of {_scope(queue, older_than=older_than)}", yes=yes)
    n = r.purge(queue=queue, older_than_s=age)
    if as_json:
        print(json.dumps({"purged": n}))
    else:
        console.print(f"purged {n} dead letter(s)")


# -- demo -------------------------------------------------------------------------------------
@app.command()
def demo(
    jobs: Annotated[int, typer.Option(min=10, help="How many quick jobs to enqueue.")] = 400,
    processes: Annotated[int, typer.Option("--processes", "-p", min=1)] = 2,
) -> None:
    """Run the demo: start workers, enqueue a mix of jobs, show progress and the final status."""
    from neuron_tasks.demo.run import run_demo

    raise typer.Exit(run_demo(database_url(), settings(), jobs=jobs, processes=processes, console=console))


def _register_command_groups() -> None:
    """The queue's own groups, then every part's (a part whose extra is not installed is left out)."""
    from neuron_tasks.cli import config, messages, queues, tenants, topics
    from neuron_tasks.core import parts

    for module in (config, tenants, topics, messages, queues):
        app.add_typer(module.app, name=module.NAME)
    for part in parts.parts():
        for command in part.commands:
            try:
                sub = parts.load(command.app)
            except ImportError as exc:
                logging.getLogger(__name__).debug("command group %s left out: %s", command.name, exc)
                continue
            app.add_typer(sub, name=command.name)


_register_command_groups()


def main() -> None:
    try:
        app()
    except NeuronTasksError as exc:
        print_error(str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
