"""/metrics: Prometheus gauges computed from the database at each scrape."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from neuron_tasks.dashboard.data import STATES, DashboardData
from neuron_tasks.dashboard.parts import metric_families

log = logging.getLogger(__name__)


class DatabaseCollector(Collector):
    def __init__(self, data: DashboardData) -> None:
        self.data = data

    def collect(self) -> Iterator[GaugeMetricFamily]:
        started = time.perf_counter()
        ok = 1.0
        try:
            yield from self._queues()
            alive = GaugeMetricFamily("neuron_tasks_workers_alive", "Worker processes with a fresh heartbeat.")
            alive.add_metric([], self.data.workers_alive())
            yield alive
            yield from self._parts()
        except Exception:  # a scrape must answer even when the database does not
            log.exception("metrics scrape failed")
            ok = 0.0
        up = GaugeMetricFamily("neuron_tasks_database_up", "1 when the last scrape could read the database.")
        up.add_metric([], ok)
        yield up
        took = GaugeMetricFamily("neuron_tasks_scrape_seconds", "Time this scrape spent reading the database.")
        took.add_metric([], time.perf_counter() - started)
        yield took

    def _queues(self) -> Iterator[GaugeMetricFamily]:
        rows = self.data.queue_counts()
        depth = GaugeMetricFamily(
            "neuron_tasks_queue_messages",
            f"Messages per queue and state (exact below {self.data.count_cap}, else the planner's estimate).",
            labels=["queue", "state"])
        dead = GaugeMetricFamily("neuron_tasks_dead_letters", "Dead letters (state failed) per queue.",
                                 labels=["queue"])
        oldest = GaugeMetricFamily("neuron_tasks_oldest_pending_age_seconds",
                                   "How long the oldest due pending or retrying message of a queue has waited.",
                                   labels=["queue"])
        for row in rows:
            for state in STATES:
                depth.add_metric([row["queue_name"], state], row[state].best)
            dead.add_metric([row["queue_name"]], row["failed"].best)
            oldest.add_metric([row["queue_name"]], float(row["oldest_ready_age_s"] or 0.0))
        yield depth
        yield dead
        yield oldest

    def _parts(self) -> Iterator[GaugeMetricFamily]:
        yield from metric_families(self.data)


def registry(data: DashboardData) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DatabaseCollector(data))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
