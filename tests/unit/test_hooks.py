"""The broker calls middleware hooks as Dramatiq does (order, failures, SkipMessage), looking
them up once per middleware list: a middleware added, removed or replaced is seen at once."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from dramatiq.middleware import Middleware, SkipMessage

from neuron_tasks.core.broker import PostgresBroker


class Recorder(Middleware):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def before_ack(self, broker: Any, message: Any) -> None:
        self.calls.append(f"{self.name}.before_ack({message})")

    def after_ack(self, broker: Any, message: Any) -> None:
        self.calls.append(f"{self.name}.after_ack({message})")


class Failing(Middleware):
    def before_ack(self, broker: Any, message: Any) -> None:
        raise RuntimeError("broken hook")

    def after_ack(self, broker: Any, message: Any) -> None:
        raise RuntimeError("broken hook")


class Skipping(Middleware):
    def before_ack(self, broker: Any, message: Any) -> None:
        raise SkipMessage("skip it")


class NotAMiddleware:
    """An object without the hooks (Dramatiq logs the AttributeError and goes on)."""


@pytest.fixture
def broker() -> PostgresBroker:
    # Connects lazily: nothing is opened by these tests.
    return PostgresBroker("postgresql://nobody@127.0.0.1:1/never", middleware=[Middleware()])


def test_hooks_run_in_dramatiq_order(broker: PostgresBroker) -> None:
    calls: list[str] = []
    broker.add_middleware(Recorder("a", calls))
    broker.add_middleware(Recorder("b", calls))
    broker.emit_before("ack", "m1")
    broker.emit_after("ack", "m1")
    assert calls == ["a.before_ack(m1)", "b.before_ack(m1)", "b.after_ack(m1)", "a.after_ack(m1)"]


def test_a_change_of_the_middleware_list_is_seen(broker: PostgresBroker) -> None:
    calls: list[str] = []
    broker.emit_before("ack", "m0")  # builds the lookup for the first list
    broker.add_middleware(Recorder("added", calls))
    broker.emit_before("ack", "m1")
    broker.middleware[-1] = Recorder("replaced", calls)  # same length, another object
    broker.emit_before("ack", "m2")
    del broker.middleware[-1]
    broker.emit_before("ack", "m3")
    assert calls == ["added.before_ack(m1)", "replaced.before_ack(m2)"]


def test_an_instance_attribute_hook_is_called(broker: PostgresBroker) -> None:
    calls: list[str] = []
    plain = Middleware()
    plain.before_ack = lambda b, message: calls.append(f"patched({message})")  # type: ignore[method-assign,assignment]
    broker.add_middleware(plain)
    broker.emit_before("ack", "m1")
    assert calls == ["patched(m1)"]


def test_failures_are_logged_and_the_others_still_run(broker: PostgresBroker,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    broker.add_middleware(Failing())
    broker.middleware.append(NotAMiddleware())  # type: ignore[arg-type]
    broker.add_middleware(Recorder("ok", calls))
    with caplog.at_level(logging.CRITICAL):
        broker.emit_before("ack", "m1")
        broker.emit_after("ack", "m1")
    assert calls == ["ok.before_ack(m1)", "ok.after_ack(m1)"]
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert sum("Unexpected failure in before_ack" in f for f in failures) == 2  # Failing, NotAMiddleware
    assert sum("Unexpected failure in after_ack" in f for f in failures) == 2


def test_skip_message_from_a_before_hook_reaches_the_worker(broker: PostgresBroker) -> None:
    calls: list[str] = []
    broker.add_middleware(Skipping())
    broker.add_middleware(Recorder("later", calls))
    with pytest.raises(SkipMessage):
        broker.emit_before("ack", "m1")
    assert calls == []
