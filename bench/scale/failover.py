"""bench/scale/failover.py: a failover mid-drain, at full size.

  .venv/bin/python bench/scale/failover.py [--messages 5000] [--hosts 2] [--threads 8] [--rate 100]

A primary and a synchronous streaming standby (neuron_tasks.testing.replication; PostgreSQL server
binaries installed, such as Debian's postgresql-15), HOSTS worker supervisors (1 process x THREADS
each) and a producer (send() at RATE per second) all given one multi-host URL
(host list, target_session_attrs=read-write). With MESSAGES jobs of 10 ms queued and a third of
them finished, the primary is stopped hard (pg_ctl -m immediate) and, 1 s later, the standby
promoted. Reported: acknowledged enqueues lost, finished jobs lost, finished jobs run again, jobs
that were running and ran again (allowed: at-least-once), seconds from the promotion to the first
job finished on the new primary, and the producer's longest send() across the failover.
The workers' logs stay in /var/tmp/neuron-tasks-failover-PID.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dramatiq
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from neuron_tasks import PostgresBroker  # noqa: E402
from neuron_tasks.config import Settings  # noqa: E402
from neuron_tasks.core import migrate  # noqa: E402
from neuron_tasks.testing.replication import ReplicatedPair, server_bin_dir  # noqa: E402

QUEUE = "scale"


def count(url: str, sql: str) -> int:
    with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def clock(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT clock_timestamp()::text").fetchone()
    assert row is not None
    return str(row[0])


def finished_since(url: str, since: str) -> bool:
    with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM neuron_tasks.messages_history "
                           "WHERE finished_at > %s::timestamptz)", (since,)).fetchone()
    return bool(row and row[0])


def snapshot(url: str) -> tuple[set[str], dict[str, int]]:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        done = {r[0] for r in conn.execute("SELECT message_id FROM neuron_tasks.messages_history")}
        runs = dict(conn.execute("SELECT key, count(*)::int FROM public.scale_runs GROUP BY 1").fetchall())
    return done, runs


def wait(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--rate", type=float, default=100.0)
    args = ap.parse_args()
    if server_bin_dir() is None:
        sys.exit("needs PostgreSQL server binaries (initdb, pg_basebackup): apt-get install postgresql-15")
    procs: list[subprocess.Popen[bytes]] = []
    logs = Path("/var/tmp") / f"neuron-tasks-failover-{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    with ReplicatedPair(synchronous=True, settings={"fsync": "on"}) as pair:
        with psycopg.connect(pair.primary.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE nt_scale")
        url = pair.url("nt_scale")
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.scale_runs (key text NOT NULL, at timestamptz DEFAULT clock_timestamp())")
        broker = PostgresBroker(url, settings=Settings(enqueue_timeout_s=60))
        key_of: dict[str, str] = {}
        msgs = [dramatiq.Message(queue_name=QUEUE, actor_name="recorded", args=(f"pre{i}",), kwargs={}, options={})
                for i in range(args.messages)]
        for i in range(0, len(msgs), 1000):
            for m in broker.enqueue_many(msgs[i:i + 1000]):
                key_of[m.message_id] = str(m.args[0])
        env = {**os.environ, "NEURON_TASKS_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
        try:
            for h in range(args.hosts):
                with (logs / f"host{h}.log").open("wb") as out:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "neuron_tasks.cli", "worker", "bench.scale.actors", "-p", "1",
                         "-t", str(args.threads), "--metrics-port", "0"],
                        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
            finished = "SELECT count(*) FROM neuron_tasks.messages_history"
            wait(lambda: count(url, finished) >= args.messages // 3, 600, "a third of the jobs")

            acked: dict[str, str] = {}
            longest = [0.0]
            halt = threading.Event()

            def produce() -> None:
                n = 0
                while not halt.is_set():
                    key = f"live{n}"
                    n += 1
                    started = time.monotonic()
                    try:
                        m = broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="recorded", args=(key,),
                                                            kwargs={}, options={}))
                        acked[m.message_id] = key
                    except Exception as exc:
                        print(f"send raised: {exc}", file=sys.stderr)
                    longest[0] = max(longest[0], time.monotonic() - started)
                    halt.wait(1.0 / args.rate)

            producer = threading.Thread(target=produce, daemon=True)
            producer.start()
            time.sleep(1.0)
            done_before, runs_before = snapshot(pair.primary.url("nt_scale"))
            pair.kill_primary()
            killed = time.monotonic()
            time.sleep(1.0)
            pair.promote()
            promoted = time.monotonic()
            since = clock(url)  # jobs finished after this were finished by resumed workers
            wait(lambda: finished_since(url, since), 120, "a job finished on the new primary")
            resumed_s = time.monotonic() - promoted
            time.sleep(2.0)
            halt.set()
            producer.join(60)
            key_of.update(acked)
            wait(lambda: count(url, "SELECT count(*) FROM neuron_tasks.messages WHERE state <> 'failed'") == 0,
                 900, "the drain")
            done_after, runs_after = snapshot(url)
            failed = count(url, "SELECT count(*) FROM neuron_tasks.messages WHERE state = 'failed'")
        finally:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(30)
            broker.close()
    finished_before_keys = {key_of[i] for i in done_before if i in key_of}
    result = {
        "messages": args.messages, "hosts": f"{args.hosts} x 1 process x {args.threads} threads",
        "acknowledged_enqueues": len(key_of), "acknowledged_enqueues_lost": len(set(key_of) - done_after),
        "finished_before_failover": len(done_before), "finished_lost": len(done_before - done_after),
        "finished_run_again": sum(1 for k in finished_before_keys if runs_after.get(k, 0) != runs_before.get(k, 0)),
        "running_jobs_run_again": sum(1 for k, n in runs_after.items() if n > 1),
        "dead_lettered": failed,
        "seconds_kill_to_promotion": round(promoted - killed, 2),
        "seconds_promotion_to_first_finish": round(resumed_s, 2),
        "longest_send_s": round(longest[0], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
