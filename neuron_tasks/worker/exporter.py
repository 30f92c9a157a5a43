"""The supervisor's /metrics: the workers' multi-process metrics plus queue depth from Postgres."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


def prepare_multiproc_dir() -> str:
    """A fresh folder for the children's metric files (set before they import prometheus_client)."""
    path = tempfile.mkdtemp(prefix="neuron-tasks-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


class QueueCollector:
    """Queue depth by state, dead letters, oldest pending age and live workers, read at scrape."""

    def __init__(self, url: str) -> None:
        self.url = url

    def collect(self) -> Iterator[Any]:
        import psycopg
        from prometheus_client.core import GaugeMetricFamily
        from psycopg.rows import dict_row

        from neuron_tasks.sql import q

        depth = GaugeMetricFamily("neuron_tasks_queue_depth", "Messages per queue and state.",
                                  labels=["queue_name", "state"])
        oldest = GaugeMetricFamily("neuron_tasks_oldest_pending_seconds",
                                   "How long the pending message due first has waited.",
                                   labels=["queue_name"])
        workers = GaugeMetricFamily("neuron_tasks_workers", "Worker processes by status.", labels=["status"])
        try:
            with psycopg.connect(self.url, autocommit=True, application_name="neuron_tasks-metrics",
                                 connect_timeout=5) as conn, conn.cursor(row_factory=dict_row) as cur:
                for row in cur.execute(q("exporter_queue_depth")).fetchall():
                    for state in ("pending", "running", "retrying", "failed"):
                        depth.add_metric([row["queue_name"], state], row[state])
                    if row["oldest_pending_s"] is not None:
                        oldest.add_metric([row["queue_name"]], row["oldest_pending_s"])
                for row in cur.execute(q("exporter_workers_by_status")).fetchall():
                    workers.add_metric([row["status"]], row["n"])
        except Exception as exc:
            log.warning("metrics: could not read queue depth: %s", exc)
        yield depth
        yield oldest
        yield workers


#: Ports tried from the configured one up: each supervisor on a host (`honcho start -c worker=N`)
#: takes the first free one, so N supervisors serve on port .. port+N-1.
PORT_RANGE = 10


def serve(port: int, url: str, host: str = "127.0.0.1", tries: int = PORT_RANGE) -> int:
    """Serve /metrics in a background thread on host:port, or on the next free port of the
    `tries` from `port` up when it is taken; returns the port. OSError when every one is taken."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(QueueCollector(url))
    end = min(port + max(tries, 1), 65536)
    for candidate in range(port, end):
        try:
            start_http_server(candidate, addr=host, registry=registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:  # another supervisor on this host: try the next port
                continue
            raise
        log.info("metrics on http://%s:%d/metrics", host, candidate)
        return candidate
    raise OSError(errno.EADDRINUSE, f"ports {port}-{end - 1} on {host} are all in use")


def child_died(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def cleanup(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
