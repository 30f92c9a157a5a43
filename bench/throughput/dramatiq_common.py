"""Shared code for the Dramatiq-based systems (ours, Redis, dramatiq-postgres, Stub).

All of them use the same actor and the same in-process ``dramatiq.Worker``
(the object the ``dramatiq`` CLI runs in each of its processes), with Dramatiq's
default middleware and default prefetch (2 x worker threads).
"""

from __future__ import annotations

import argparse
import time
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.message import Message
from harness import QUEUE, DoneCounter, LatencyRecorder, System, ignore_sigint, run_threads, worker_protocol

WORKER_TIMEOUT_MS = 1000  # dramatiq.Worker default
SLEEP_S = 0.010  # the "10 ms job" of the topics measurement


def declare_actor(
    broker: dramatiq.Broker, recorder: LatencyRecorder | None, done: DoneCounter | None = None
) -> dramatiq.Actor[Any, Any]:
    """The no-op actor. With ``t`` it records its pickup latency (latency test only).

    Also declares ``sleep10`` (a 10 ms job, same queue) for the topics measurement.
    ``done`` counts completions for systems whose side channel needs it.
    """

    def noop(i: int, t: float | None = None) -> None:
        if t is not None and recorder is not None:
            recorder.record(t)
        if done is not None:
            done.done()

    def sleep10(i: int) -> None:
        time.sleep(SLEEP_S)
        if done is not None:
            done.done()

    dramatiq.actor(sleep10, broker=broker, actor_name="sleep10", queue_name=QUEUE, max_retries=0)
    return dramatiq.actor(noop, broker=broker, actor_name="noop", queue_name=QUEUE, max_retries=0)


class DramatiqSystem(System):
    """Producer side of a Dramatiq broker; the worker side is :func:`dramatiq_worker_main`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._broker: dramatiq.Broker | None = None
        self._actor: dramatiq.Actor[Any, Any] | None = None

    @staticmethod
    @abstractmethod
    def build_broker(db_url: str, redis_url: str) -> dramatiq.Broker: ...

    @abstractmethod
    def reset_storage(self) -> None:
        """Fresh database / flushed keyspace, schema installed."""

    def setup(self) -> None:
        if self._broker is not None:  # a measurement that sets up several times
            self._broker.close()
            self._broker = None
        self.reset_storage()
        self._broker = self.build_broker(self.opts.db_url, self.opts.redis_url)
        dramatiq.set_broker(self._broker)
        self._actor = declare_actor(self._broker, None)

    @property
    def broker(self) -> dramatiq.Broker:
        assert self._broker is not None
        return self._broker

    @property
    def actor(self) -> dramatiq.Actor[Any, Any]:
        assert self._actor is not None
        return self._actor

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()

    def enqueue(self, n: int, producers: int) -> None:
        send = self.actor.send

        def produce(r: range) -> None:
            for i in r:
                send(i)

        run_threads(n, producers, produce)

    def messages(self, r: range) -> list[Message[Any]]:
        return [self.actor.message(i) for i in r]

    def send_timestamped(self, i: int) -> None:
        self.actor.send(i, time.time())

    def dramatiq_settings(self) -> dict[str, str]:
        return {
            "worker": "dramatiq.Worker in-process, 8 threads/process",
            "prefetch": "dramatiq default (2 x threads = 16)",
            "middleware": "dramatiq defaults",
        }


def dramatiq_worker_main(build_broker: Callable[[str, str], dramatiq.Broker]) -> Callable[[argparse.Namespace], None]:
    def main(args: argparse.Namespace) -> None:
        ignore_sigint()
        broker = build_broker(args.db_url, args.redis_url)
        dramatiq.set_broker(broker)
        recorder = LatencyRecorder(args.latency_file)
        done = DoneCounter(args.done_file) if args.done_file else None
        declare_actor(broker, recorder, done)
        worker = dramatiq.Worker(broker, worker_threads=args.threads, worker_timeout=WORKER_TIMEOUT_MS)

        def stop() -> None:
            worker.stop(timeout=10_000)
            broker.close()
            recorder.close()
            if done is not None:
                done.close()

        worker_protocol(worker.start, stop)

    return main
