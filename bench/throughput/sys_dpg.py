"""dramatiq-postgres 1.4.0 (psycopg 3 fork of dramatiq-pg), venv: .bench-venvs/dpg.

Used as its README shows: ``PostgresBroker(url=...)`` with default options
(LISTEN/NOTIFY on, results backend on, poll_interval 1 s), schema created with
its ``init()`` (what ``dramatiq-postgres init`` runs), workers = dramatiq.Worker.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import harness
import pgutil
from dramatiq_common import DramatiqSystem, dramatiq_worker_main, run_threads
from dramatiq_postgres import PostgresBroker, init
from harness import dist_version
from psycopg.types.json import Json


def build_broker(db_url: str, redis_url: str) -> dramatiq.Broker:
    return PostgresBroker(url=db_url)


class DpgSystem(DramatiqSystem):
    name = "dramatiq-postgres"

    build_broker = staticmethod(build_broker)

    def __init__(self, opts: harness.Options) -> None:
        super().__init__(opts)
        self.probe: pgutil.Probe | None = None

    def reset_storage(self) -> None:
        if self.probe is not None:
            self.probe.close()
            self.probe = None
        pgutil.recreate_database(self.opts.db_url)
        import psycopg

        with psycopg.connect(self.opts.db_url) as conn, conn.cursor() as curs:
            init(curs)
        self.probe = pgutil.Probe(
            self.opts.db_url,
            # Two EXISTS, each answered from an index (a single IN () makes a
            # bitmap heap scan over every row, ~15x slower mid-drain).
            "SELECT EXISTS (SELECT 1 FROM dramatiq.queue WHERE queue_name = 'bench' AND state = 'queued') "
            "OR EXISTS (SELECT 1 FROM dramatiq.queue WHERE queue_name = 'bench' AND state = 'consumed')",
        )

    def fill(self, n: int) -> None:
        # No bulk API: seed the backlog with the broker's own quiet INSERT
        # (same row as send() writes, minus NOTIFY), pipelined, 4 threads.
        from dramatiq_postgres.broker import QUERIES
        from dramatiq_postgres.utils import tidy4json

        pool: Any = self.broker.pool  # type: ignore[attr-defined]

        def produce(r: range) -> None:
            for start in range(r.start, r.stop, 1000):
                msgs = self.messages(range(start, min(start + 1000, r.stop)))
                with pool.connection() as conn, conn.cursor() as curs:
                    curs.executemany(
                        QUERIES.ENQUEUE_QUIET,
                        [(m.queue_name, m.message_id, Json(tidy4json(m)), 0) for m in msgs],
                    )

        run_threads(n, 4, produce)

    def pending(self) -> bool:
        assert self.probe is not None
        return self.probe.pending()

    def problems(self) -> str | None:
        assert self.probe is not None
        n = self.probe.scalar("SELECT count(*) FROM dramatiq.queue WHERE state = 'rejected'")
        return f"{n} rejected" if n else None

    def close(self) -> None:
        super().close()
        if self.probe is not None:
            self.probe.close()

    def versions(self) -> dict[str, str]:
        return {
            "dramatiq-postgres": dist_version("dramatiq-postgres"),
            "dramatiq": dist_version("dramatiq"),
            "psycopg": dist_version("psycopg"),
            "postgres": pgutil.server_version(self.opts.db_url),
        }

    def settings(self) -> dict[str, str]:
        return self.dramatiq_settings() | {
            "middleware": "dramatiq defaults + Results (its results=True default)",
            "broker": "PostgresBroker(url=...) defaults: listen+notify on, results on, "
            "poll_interval=1s, pool maxconn=16",
            "bulk": "n/a (no bulk API); drain backlog seeded by executemany of its ENQUEUE_QUIET",
            "side channel": "EXISTS dramatiq.queue state = queued OR EXISTS ... state = consumed",
        }


if __name__ == "__main__":
    harness.main(DpgSystem, dramatiq_worker_main(build_broker))
