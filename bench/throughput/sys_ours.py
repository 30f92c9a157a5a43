"""Our broker: ``neuron_tasks.core.broker.PostgresBroker`` (interpreter: the project venv).

Schema: ``broker.migrate()`` when the broker has it, else the
``neuron-tasks db upgrade`` CLI next to this interpreter
(``NEURON_TASKS_DATABASE_URL`` set to the bench database).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dramatiq
import harness
import pgutil
from dramatiq_common import DramatiqSystem, dramatiq_worker_main
from ours_extra import measure_backlog, measure_topics

TABLE = "neuron_tasks.messages"


def build_broker(db_url: str, redis_url: str) -> dramatiq.Broker:
    from neuron_tasks.core.broker import PostgresBroker

    broker: dramatiq.Broker = PostgresBroker(url=db_url)
    return broker


def migrate(db_url: str) -> str:
    """Apply the schema; returns how it was done."""
    broker: Any = build_broker(db_url, "")
    try:
        if hasattr(broker, "migrate"):
            broker.migrate()
            return "broker.migrate()"
    finally:
        broker.close()
    cli = Path(sys.executable).parent / "neuron-tasks"
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "neuron_tasks"]
    env = os.environ | {"NEURON_TASKS_DATABASE_URL": db_url}
    subprocess.run([*cmd, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
    return "neuron-tasks db upgrade"


class OursSystem(DramatiqSystem):
    name = "ours"
    custom_measurements = {"backlog": measure_backlog, "topics": measure_topics}

    build_broker = staticmethod(build_broker)

    def __init__(self, opts: harness.Options) -> None:
        super().__init__(opts)
        self.probe: pgutil.Probe | None = None
        self.migrated_with = "?"

    def reset_storage(self) -> None:
        if os.environ.get("NEURON_TASKS_DURABILITY"):
            from neuron_tasks.config import Settings

            if "durability" not in Settings.model_fields:
                raise harness.NotApplicable("this version has no durability setting")
        if self.probe is not None:
            self.probe.close()
            self.probe = None
        pgutil.recreate_database(self.opts.db_url)
        self.migrated_with = migrate(self.opts.db_url)
        self.probe = pgutil.Probe(
            self.opts.db_url,
            # Two EXISTS so that each is answered by a partial index
            # (messages_eta_idx, messages_lease_expiry_idx), not a heap scan.
            f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE queue_name = 'bench' "
            "AND state IN ('pending', 'retrying')) "
            f"OR EXISTS (SELECT 1 FROM {TABLE} WHERE queue_name = 'bench' AND state = 'running')",
        )

    def enqueue_bulk(self, n: int, chunk: int) -> None:
        enqueue_many = self.broker.enqueue_many  # type: ignore[attr-defined]
        for start in range(0, n, chunk):
            enqueue_many(self.messages(range(start, min(start + chunk, n))))

    def pending(self) -> bool:
        assert self.probe is not None
        return self.probe.pending()

    def problems(self) -> str | None:
        assert self.probe is not None
        n = self.probe.scalar(f"SELECT count(*) FROM {TABLE} WHERE state = 'failed'")
        return f"{n} failed" if n else None

    def close(self) -> None:
        super().close()
        if self.probe is not None:
            self.probe.close()

    def _middleware(self) -> list[Any]:
        broker: Any = build_broker(self.opts.db_url, "")  # connects lazily: nothing opened here
        try:
            return list(broker.middleware)
        finally:
            broker.close()

    def versions(self) -> dict[str, str]:
        return {
            "neuron_tasks": harness.dist_version("neuron_tasks")
            if harness.dist_version("neuron_tasks") != "?"
            else harness.dist_version("neuron-tasks"),
            "dramatiq": harness.dist_version("dramatiq"),
            "psycopg": harness.dist_version("psycopg"),
            "postgres": pgutil.server_version(self.opts.db_url),
        }

    def settings(self) -> dict[str, str]:
        from neuron_tasks.config import Settings

        cfg = Settings()
        return self.dramatiq_settings() | {
            "prefetch": f"its own claim batch: batch_size={cfg.batch_size} per process (replaces Dramatiq's prefetch)",
            "middleware": "its defaults: " + ", ".join(type(m).__name__ for m in self._middleware()),
            "broker": f"PostgresBroker(url=...) defaults (ack_wait={cfg.ack_wait}, "
            f"naptime_ms={cfg.naptime_ms}, pool_max_size={cfg.pool_max_size}, lease_s={cfg.lease_s}); "
            f"queue_depth={cfg.queue_depth} via NEURON_TASKS_QUEUE_DEPTH (default 10,000 refuses a 20,000 backlog)",
            "bulk": f"broker.enqueue_many(list of {self.opts.bulk_chunk} dramatiq Messages)",
            "side channel": f"EXISTS {TABLE} state in (pending, retrying) OR EXISTS ... state = running",
            "durability": getattr(cfg, "durability", None) or os.environ.get("NEURON_TASKS_DURABILITY", "default"),
        }


if __name__ == "__main__":
    harness.main(OursSystem, dramatiq_worker_main(build_broker))
