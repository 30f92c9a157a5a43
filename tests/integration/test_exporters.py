"""Metrics of several worker supervisors on one host (`honcho start -c worker=2`): each serves
/metrics on a port of its own, says which, and each port counts its own workers' messages."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MODULE = "tests.integration.mp_actors"
ADDRESS = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


def free_ports(n: int) -> int:
    """A port P with P .. P+n-1 free now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n < 65536 and all(_free(base + i) for i in range(n)):
            return base
    raise AssertionError("no run of free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Supervisor:
    def __init__(self, url: str, port: int, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "neuron_tasks.cli", "worker", MODULE, "-p", "1", "-t", "2",
                 "--metrics-port", str(port)],
                cwd=ROOT, env=worker_env(url), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def port(self, timeout: float = 60) -> int:
        """The port this supervisor says it serves /metrics on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (m := ADDRESS.search(self.text())) is not None:
                return int(m.group(1))
            assert self.proc.poll() is None, f"supervisor exited:\n{self.text()}"
            time.sleep(0.1)
        raise AssertionError(f"the supervisor never said where its metrics are:\n{self.text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def supervisors(tmp_path: Path) -> Iterator[list[Supervisor]]:
    running: list[Supervisor] = []
    yield running
    for s in running:
        s.stop()


def fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def scrape(port: int) -> dict[str, float]:
    text = fetch(port)
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def record(values: dict[str, float]) -> float:
    return values.get('neuron_tasks_messages_total{actor_name="record",queue_name="mp"}', 0.0)


def test_two_supervisors_on_one_host_both_export(clean_db: str, tmp_path: Path,
                                                 supervisors: list[Supervisor]) -> None:
    base = free_ports(3)
    first = Supervisor(clean_db, base, tmp_path / "first.log")
    supervisors.append(first)
    assert first.port() == base
    second = Supervisor(clean_db, base, tmp_path / "second.log")  # the same --metrics-port, as honcho -c gives
    supervisors.append(second)
    assert second.port() == base + 1
    assert f"{base} is in use" in second.text()
    with psycopg.connect(clean_db, autocommit=True) as conn:  # both children alive before any message
        deadline = time.monotonic() + 60
        while conn.execute("SELECT count(*) FROM neuron_tasks.workers WHERE stopped_at IS NULL").fetchone() != (2,):
            assert time.monotonic() < deadline, "two worker processes"
            time.sleep(0.2)
        conn.execute("SELECT neuron_tasks.enqueue('mp', 'record', jsonb_build_array('m' || i)) "
                     "FROM generate_series(1, 40) i")
        conn.execute("SELECT neuron_tasks.enqueue('no_worker_here', 'record', '[\"later\"]')")
    deadline = time.monotonic() + 60
    while True:
        a, b = scrape(base), scrape(base + 1)
        if record(a) + record(b) == 40:
            break
        assert time.monotonic() < deadline, f"the two exporters counted {record(a)} + {record(b)} of 40"
        time.sleep(0.3)
    for values in (a, b):  # each serves the queue's depth and the workers, read from PostgreSQL
        assert values['neuron_tasks_queue_depth{queue_name="no_worker_here",state="pending"}'] == 1
        assert values['neuron_tasks_workers{status="running"}'] == 2


def test_metrics_port_taken_by_another_program(clean_db: str, tmp_path: Path,
                                               supervisors: list[Supervisor]) -> None:
    base = free_ports(2)
    with socket.socket() as other:
        other.bind(("127.0.0.1", base))
        other.listen()
        sup = Supervisor(clean_db, base, tmp_path / "sup.log")
        supervisors.append(sup)
        assert sup.port() == base + 1
        assert "# HELP neuron_tasks_queue_depth" in fetch(base + 1)
