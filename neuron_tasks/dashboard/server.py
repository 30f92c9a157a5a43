"""Run the dashboard: in the foreground (`neuron-tasks dashboard`) or in a thread (demo, tests)."""

from __future__ import annotations

import threading
import time

import uvicorn
from psycopg_pool import ConnectionPool

from neuron_tasks.dashboard.app import create_app
from neuron_tasks.dashboard.settings import DashboardSettings, is_loopback
from neuron_tasks.errors import NeuronTasksError


class DashboardConfigError(NeuronTasksError):
    """The dashboard was asked to bind beyond loopback, or to answer to any Host name, without a token."""


def check_bind(settings: DashboardSettings) -> None:
    if not is_loopback(settings.dashboard_host) and not settings.dashboard_token:
        raise DashboardConfigError(
            f"binding the dashboard to {settings.dashboard_host} exposes it beyond this machine: set a token "
            "(NEURON_TASKS_DASHBOARD_TOKEN or --token), or bind 127.0.0.1"
        )
    if "*" in settings.dashboard_allowed_hosts and not settings.dashboard_token:
        raise DashboardConfigError(
            "dashboard_allowed_hosts '*' answers to any Host name, so any web page could reach the dashboard "
            "through DNS rebinding: set a token (NEURON_TASKS_DASHBOARD_TOKEN or --token), or list the names"
        )


def make_server(pool: ConnectionPool, settings: DashboardSettings,
                read_pool: ConnectionPool | None = None) -> uvicorn.Server:
    """`read_pool`: a replica's pool for the pages and /metrics (see `db.make_read_pool`)."""
    check_bind(settings)
    app = create_app(pool, settings, read_pool=read_pool)
    config = uvicorn.Config(app, host=settings.dashboard_host, port=settings.dashboard_port,
                            log_level="warning", lifespan="off", access_log=False, server_header=False)
    return uvicorn.Server(config)


def url_of(server: uvicorn.Server, settings: DashboardSettings) -> str:
    port = settings.dashboard_port
    for s in getattr(server, "servers", []) or []:
        for sock in s.sockets:
            port = sock.getsockname()[1]
            break
    host = settings.dashboard_host
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::1" else host)
    return f"http://{shown}:{port}/"


class BackgroundDashboard:
    """The dashboard served from a daemon thread; `url` is known once `start()` returns."""

    def __init__(self, pool: ConnectionPool, settings: DashboardSettings) -> None:
        self.settings = settings
        self.server = make_server(pool, settings)
        self.thread = threading.Thread(target=self.server.run, name="neuron-tasks-dashboard", daemon=True)
        self.url = ""

    def start(self, timeout: float = 15.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise NeuronTasksError(
                    f"the dashboard did not start on {self.settings.dashboard_host}:{self.settings.dashboard_port}"
                    " (port in use? pass --port 0 for any free port)")
            time.sleep(0.02)
        self.url = url_of(self.server, self.settings)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
