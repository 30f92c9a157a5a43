"""Partition: a worker host in a network namespace of its own, joined to a private PostgreSQL over
a veth pair, is cut off (its link down: packets dropped, nothing reset) for longer than the lease
while another worker keeps working.

- its messages are taken over once (by the other worker, after their leases expire);
- the messages it had claimed but not started are not run by it when it is back (their leases
  lapsed before they started): each runs once, on the other worker;
- its late results are rejected (the ack matches no row) and logged;
- nothing is lost: every message is finished exactly once in the history;
- back on the network it rejoins and runs new work, re-running nothing the other finished.

Skipped without root or iproute2 (network namespaces).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from neuron_tasks.core import migrate
from neuron_tasks.testing import netns
from neuron_tasks.testing.cluster import PrivateCluster
from tests.faults.conftest import ACTORS, ROOT, Workers, enqueue, wait_for, worker_env

WHY_NOT = netns.available()
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240),
              pytest.mark.skipif(WHY_NOT is not None, reason=f"partition test: {WHY_NOT}")]

LEASE_S = 3.0
CUT_S = 4 * LEASE_S  # well past the lease, and past the other worker's wait before it sweeps
JOB_S = 2.0
THREADS = 2
HELD = 6  # more than its threads run: the rest wait, claimed, in the host's memory
SETTINGS = {"lease_s": str(LEASE_S), "batch_size": "20"}
#: The other worker holds only what its threads run, so that new work is left for the host once back.
OTHER_SETTINGS = {"lease_s": str(LEASE_S), "batch_size": str(THREADS)}


@pytest.fixture
def host() -> Iterator[netns.SimulatedHost]:
    with netns.SimulatedHost() as made:
        yield made


@pytest.fixture
def database(host: netns.SimulatedHost) -> Iterator[tuple[PrivateCluster, str]]:
    """A private cluster listening on 127.0.0.1 and on the simulated host's link; a migrated database."""
    with PrivateCluster(settings={"listen_addresses": f"127.0.0.1,{host.gateway}"}) as pg:
        with (pg.pgdata / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {host.address}/32 trust\n")
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("CREATE DATABASE nt_partition")
        url = make_conninfo(pg.url, dbname="nt_partition")
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.test_runs (key text NOT NULL, pid int,"
                         " at timestamptz DEFAULT clock_timestamp())")
        yield pg, url


@pytest.fixture
def cut_off_worker(host: netns.SimulatedHost, tmp_path: Path) -> Iterator[Callable[[str], Workers]]:
    started: list[Workers] = []

    def start(url: str) -> Workers:
        log = tmp_path / "cut-off-worker.log"
        cmd = host.command([sys.executable, "-m", "neuron_tasks.cli", "worker", ACTORS, "-p", "1", "-t", str(THREADS),
                            "--metrics-port", "0"])
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(url, **SETTINGS), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        started.append(Workers(proc, log))
        return started[-1]

    yield start
    for workers in started:
        try:
            os.killpg(workers.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        workers.proc.wait(10)
        print(f"--- cut-off worker log ---\n{workers.log_text()[-6000:]}")


def rows(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql, params or None).fetchall()  # type: ignore[arg-type]


def test_a_cut_off_host_is_taken_over_once_and_rejoins(
    host: netns.SimulatedHost, database: tuple[PrivateCluster, str],
    cut_off_worker: Callable[[str], Workers], spawn_workers: Callable[..., Workers],
) -> None:
    _pg, url = database
    cut_url = make_conninfo(url, host=host.gateway)
    a = cut_off_worker(cut_url)
    held = [enqueue(url, "sleepy", [f"held{i}", JOB_S]) for i in range(HELD)]
    wait_for(lambda: len(rows(url, "SELECT 1 FROM public.test_runs WHERE key LIKE 'start:held%'")) == THREADS
             and rows(url, "SELECT count(*), count(DISTINCT lease_owner) FROM neuron_tasks.messages"
                           " WHERE state = 'running'")[0] == (HELD, 1),
             "the host to start two jobs and hold the others", timeout=60)
    a_pids = {r[0] for r in rows(url, "SELECT pid FROM public.test_runs")}
    running = {str(r[0]).removeprefix("start:") for r in rows(url, "SELECT key FROM public.test_runs")}
    assert len(running) == THREADS

    host.cut()
    cut_at = time.monotonic()
    b = spawn_workers(url, processes=1, threads=THREADS, **OTHER_SETTINGS)
    try:
        wait_for(lambda: len(rows(url, "SELECT 1 FROM neuron_tasks.messages_history WHERE message_id = ANY(%s)",
                                  held)) == HELD, "the other worker to take over and finish every job", timeout=90)
        taken_over_after_s = time.monotonic() - cut_at
        time.sleep(max(0.0, CUT_S - taken_over_after_s))
    finally:
        host.mend()
    mended_at = rows(url, "SELECT clock_timestamp()")[0][0]
    assert isinstance(mended_at, datetime)
    assert taken_over_after_s > LEASE_S, "taken over before the lease expired"

    # Back on the network: its late results are refused and logged, and it takes new work.
    wait_for(lambda: a.log_text().count("matched no row") >= THREADS, "the host's late acks to be refused",
             timeout=90)
    # The messages it held but had not started are not run by it: logged and counted.
    wait_for(lambda: a.log_text().count("was not run: lease lapsed") >= HELD - THREADS,
             "the host to drop the messages whose leases lapsed before they started", timeout=30)
    after = [enqueue(url, "sleepy", [f"after{i}", 0.2]) for i in range(16)]
    wait_for(lambda: len(rows(url, "SELECT 1 FROM neuron_tasks.messages_history WHERE message_id = ANY(%s)",
                              after)) == len(after), "the work sent after the partition", timeout=90)
    wait_for(lambda: rows(url, "SELECT 1 FROM public.test_runs WHERE key LIKE 'start:after%%' AND pid = ANY(%s)",
                          list(a_pids)), "the host to rejoin and run new work", timeout=30)

    log = a.log_text()[-4000:] + "\n" + b.log_text()[-4000:]
    history = rows(url, "SELECT message_id, count(*) FROM neuron_tasks.messages_history GROUP BY 1")
    assert {m for m, _ in history} == set(held) | set(after), log
    assert all(n == 1 for _, n in history), f"a message finished twice: {history}\n{log}"
    assert rows(url, "SELECT count(*) FROM neuron_tasks.messages")[0][0] == 0, log
    for i in range(len(held)):
        starts = rows(url, "SELECT pid, at FROM public.test_runs WHERE key = %s", f"start:held{i}")
        on_b = [s for s in starts if s[0] not in a_pids]
        assert len(on_b) == 1, f"held{i}: taken over more or less than once: {starts}\n{log}"
        assert not [s for s in starts if s[0] in a_pids and s[1] > mended_at], f"held{i} ran again\n{log}"
        # Started on the host only if it was running when the link went down; else never there.
        assert len(starts) == (2 if f"held{i}" in running else 1), f"held{i} ran twice: {starts}\n{log}"
    for i, message_id in enumerate(held):
        what = "the refused ack" if f"held{i}" in running else "the dropped message"
        assert message_id in a.log_text(), f"{what} of {message_id} is not logged\n{log}"
