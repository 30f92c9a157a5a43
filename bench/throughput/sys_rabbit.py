"""Dramatiq's RabbitmqBroker on the local RabbitMQ (venv: .bench-venvs/dramatiq-rabbit).

Two configurations, chosen by ``BENCH_RABBIT_CONFIRM`` (run.py sets it):
``rabbit`` = ``RabbitmqBroker(url=...)`` defaults (``confirm_delivery=False``: a
publish returns without waiting for the server), ``rabbit-confirm`` =
``confirm_delivery=True`` (each publish waits for the server's confirm).

Side channel: a message that a worker holds unacked is invisible to a queue
count, so the workers count their completions in a file (one ``os.write`` per
job) and a measurement is over when that count reaches what was sent.
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

import dramatiq
import harness
import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq_common import DramatiqSystem, dramatiq_worker_main
from harness import QUEUE, DoneCounter, dist_version

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
CONFIRM = os.environ.get("BENCH_RABBIT_CONFIRM", "0") == "1"
URL = os.environ.get("BENCH_RABBITMQ_URL", DEFAULT_URL)


def build_broker(db_url: str, redis_url: str) -> dramatiq.Broker:
    return RabbitmqBroker(url=URL, confirm_delivery=CONFIRM)


class RabbitSystem(DramatiqSystem):
    name = "rabbitmq"

    build_broker = staticmethod(build_broker)

    def __init__(self, opts: harness.Options) -> None:
        super().__init__(opts)
        self.sent = 0
        self._sent_lock = threading.Lock()

    def reset_storage(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(URL))
        try:
            channel = conn.channel()
            for name in (QUEUE, f"{QUEUE}.DQ", f"{QUEUE}.XQ"):
                channel.queue_delete(name)  # deleting a missing queue is a no-op
        finally:
            conn.close()
        if self.done_file:
            os.unlink(self.done_file)
        fd, self.done_file = tempfile.mkstemp(prefix="bench-done-rabbit-")
        os.close(fd)
        self.sent = 0

    def _count(self, n: int) -> None:
        with self._sent_lock:
            self.sent += n

    def enqueue(self, n: int, producers: int) -> None:
        super().enqueue(n, producers)
        self._count(n)

    def send_timestamped(self, i: int) -> None:
        super().send_timestamped(i)
        self._count(1)

    def pending(self) -> bool:
        assert self.done_file is not None
        return DoneCounter.count(self.done_file) < self.sent

    def problems(self) -> str | None:
        _ready, _delayed, dead = self.broker.get_queue_message_counts(QUEUE)  # type: ignore[attr-defined]
        return f"{dead} dead-lettered" if dead else None

    def close(self) -> None:
        super().close()
        if self.done_file:
            os.unlink(self.done_file)
            self.done_file = None

    def versions(self) -> dict[str, str]:
        conn = pika.BlockingConnection(pika.URLParameters(URL))
        try:
            props: Any = conn._impl.server_properties
            server = props.get("version", b"?")
        finally:
            conn.close()
        return {
            "dramatiq": dist_version("dramatiq"),
            "pika": dist_version("pika"),
            "rabbitmq-server": server.decode() if isinstance(server, bytes) else str(server),
        }

    def settings(self) -> dict[str, str]:
        return self.dramatiq_settings() | {
            "broker": f"RabbitmqBroker(url=..., confirm_delivery={CONFIRM}), otherwise defaults "
            "(durable queues, persistent messages)",
            "bulk": "n/a (Dramatiq has no bulk enqueue; group() sends one by one)",
            "side channel": "completions counted by the workers in a file (one write per job) = messages sent",
            "reset": "queue_delete of bench, bench.DQ, bench.XQ before each measurement",
        }


if __name__ == "__main__":
    harness.main(RabbitSystem, dramatiq_worker_main(build_broker))
