"""`neuron-tasks dashboard`: the web process (Procfile `web:`), with /metrics and /healthz."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from neuron_tasks.core import parts

if TYPE_CHECKING:
    from neuron_tasks.dashboard.settings import DashboardSettings


def _page_titles() -> str:
    """The titles of the pages the installed parts bring, for the help text."""
    return ", ".join(page.title for _, page in parts.pages().values()) or "none"


app = typer.Typer(
    help="The web dashboard for operators: queues, messages, dead letters (requeue/delete), workers, "
    f"and every installed part's pages ({_page_titles()}); /metrics for Prometheus; /healthz.\n\n"
    "Binds 127.0.0.1 by default. Any other address needs a token (--token or "
    "NEURON_TASKS_DASHBOARD_TOKEN); every request then carries it (Authorization: Bearer, the "
    "X-Neuron-Tasks-Token header, or a cookie set by opening /?token=...). It answers only to the Host names "
    "127.0.0.1, localhost, [::1] and the bound address (with its port), and to those given with --allowed-host "
    "or NEURON_TASKS_DASHBOARD_ALLOWED_HOSTS (a name a proxy serves it under).",
    invoke_without_command=True,
)


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default 8787; 0 = any free port).")] = None,
    token: Annotated[str | None, typer.Option(
        help="Access token (default: NEURON_TASKS_DASHBOARD_TOKEN); required beyond 127.0.0.1.")] = None,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", metavar="NAME", help="Another Host name (or name:port) it answers to (repeat; default: "
        "NEURON_TASKS_DASHBOARD_ALLOWED_HOSTS).")] = None,
) -> None:
    """Serve the dashboard until Ctrl-C / SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    from neuron_tasks import db
    from neuron_tasks.commandline import console, database_url, fail
    from neuron_tasks.dashboard.server import DashboardConfigError, check_bind, make_server, url_of

    settings = _settings(host=host, port=port, token=token, allowed_hosts=allowed_host or None)
    try:
        check_bind(settings)
    except DashboardConfigError as exc:
        fail(str(exc))
    url = database_url()
    pool = db.make_pool(url, max_size=settings.dashboard_pool_max_size, name="neuron_tasks-dashboard")
    from neuron_tasks.config import Settings

    reads = db.make_read_pool(Settings(), pool, name="neuron_tasks-dashboard",
                              max_size=settings.dashboard_pool_max_size)  # a replica's, when configured
    server = make_server(pool, settings, read_pool=reads)
    console.print(f"dashboard on http://{settings.dashboard_host}:{settings.dashboard_port}/ "
                  f"(database {db.redact(url)}); Ctrl-C to stop", highlight=False)
    try:
        server.run()
    finally:
        if reads is not pool:
            reads.close()
        pool.close()
    if not server.started:
        fail(f"could not bind {settings.dashboard_host}:{settings.dashboard_port}"
             f" ({url_of(server, settings)} in use?)")


def _settings(**overrides: Any) -> DashboardSettings:
    from neuron_tasks.dashboard.settings import DashboardSettings

    values = {f"dashboard_{k}": v for k, v in overrides.items() if v is not None}
    return DashboardSettings(**values)


def demo_phase(url: str, settings: Any, console: Any) -> bool:
    """Serve the dashboard on the demo's database; wait for Ctrl-C only when a person is watching."""
    import time

    from neuron_tasks import db
    from neuron_tasks.dashboard.server import BackgroundDashboard

    pool = db.make_pool(url, max_size=4, name="neuron_tasks-dashboard")
    dash_settings = _settings()
    try:
        server = BackgroundDashboard(pool, dash_settings)
        try:
            link = server.start()
        except Exception:
            server = BackgroundDashboard(pool, _settings(port=0))  # 8787 taken: any free port
            link = server.start()
        console.print(f"dashboard: [bold]{link}[/]  (queues, dead letters, workers, /metrics)", highlight=False)
        if sys.stdin.isatty():
            console.print("press Ctrl-C to stop the dashboard")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                console.print("dashboard stopped")
        else:
            console.print("(stdin is not a terminal: stopping the dashboard now; run `neuron-tasks dashboard`)")
        server.stop()
        return True
    finally:
        pool.close()
