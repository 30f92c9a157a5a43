"""Credentials in the LLM base URL (user:password@) appear nowhere: not in `config show`, not in
the provider state's key or errors, not in dead letters or stored results, not in the logs
(httpx's request lines included). A real worker runs failing embed and complete jobs against a
real local provider."""

from __future__ import annotations

import importlib
import logging
import socket
import sys
from collections.abc import Iterator
from types import ModuleType

import dramatiq
import psycopg
import pytest
from dramatiq.results.errors import ResultFailure

from neuron_tasks import PostgresBroker
from neuron_tasks.core import runtime
from neuron_tasks.db import redact
from neuron_tasks.llm.settings import LlmSettings
from neuron_tasks.testing import truncate
from neuron_tasks.testing.fake_llm import FakeProvider

PASSWORD = "s3cr3t-pa55word"


def with_credentials(base_url: str) -> str:
    return base_url.replace("http://", f"http://svc-user:{PASSWORD}@")


def test_redact_hides_passwords_of_every_kind_of_url() -> None:
    assert PASSWORD not in redact(f"postgresql://u:{PASSWORD}@db.example/app")
    assert PASSWORD not in redact(f"host=db.example user=u password={PASSWORD} dbname=app")
    shown = redact(f"https://svc-user:{PASSWORD}@api.example.com/v1")
    assert PASSWORD not in shown and shown.startswith("https://svc-user:") and "api.example.com/v1" in shown
    assert PASSWORD not in redact(f"https://api.example.com/v1?api_key={PASSWORD}&model=x")
    assert "model=x" in redact(f"https://api.example.com/v1?api_key={PASSWORD}&model=x")
    assert redact("https://api.example.com/v1") == "https://api.example.com/v1"


def test_config_show_hides_the_base_url_password(clean_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURON_TASKS_LLM_HTTP_BASE_URL", f"http://svc-user:{PASSWORD}@127.0.0.1:9/v1")
    monkeypatch.setenv("NEURON_TASKS_LLM_HTTP_RERANK_URL", f"http://svc-user:{PASSWORD}@127.0.0.1:9/rerank")
    with psycopg.connect(clean_db, autocommit=True) as conn:
        rows = runtime.show(conn)
        shown = {r["key"]: r["value"] for r in rows}
        assert "127.0.0.1:9/v1" in shown["llm_http_base_url"]
        assert PASSWORD not in repr(rows)
        monkeypatch.delenv("NEURON_TASKS_LLM_HTTP_BASE_URL")
        runtime.set_value(conn, "llm_http_base_url", f"http://svc-user:{PASSWORD}@127.0.0.1:9/v2")
        try:
            rows = runtime.show(conn)
            assert {r["key"]: r for r in rows}["llm_http_base_url"]["source"] == "runtime"
            assert PASSWORD not in repr(rows)
        finally:
            runtime.reset_value(conn, "llm_http_base_url")


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(timeout_sleep_s=1.0) as f:
        yield f


@pytest.fixture
def actors(broker: PostgresBroker, clean_db: str, fake: FakeProvider) -> Iterator[ModuleType]:
    truncate(clean_db, "llm")
    settings = LlmSettings(llm_provider="http", llm_http_base_url=with_credentials(fake.base_url),
                           llm_timeout_ms=400, llm_breaker_failures=3, llm_breaker_open_s=30)
    name = "neuron_tasks.llm.actors"
    module = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
    module.configure(settings, pool=broker.pool)
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    yield module
    worker.stop(timeout=5000)


def dump(url: str) -> str:
    """Everything the database holds about messages, results and providers, as text."""
    with psycopg.connect(url) as conn:
        parts = [repr(conn.execute("SELECT * FROM neuron_tasks.llm_provider_state").fetchall()),
                 repr(conn.execute("SELECT message_id, last_error, errors::text, payload FROM neuron_tasks.messages")
                      .fetchall()),
                 repr([bytes(v[0]) for v in conn.execute("SELECT value FROM neuron_tasks.results").fetchall()]),
                 repr(conn.execute("SELECT * FROM neuron_tasks.llm_usage").fetchall())]
    return "\n".join(parts)


def test_failing_jobs_leak_the_password_nowhere(actors: ModuleType, fake: FakeProvider, clean_db: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "dramatiq", "neuron_tasks"):
        caplog.set_level(logging.DEBUG, logger=name)
    fake.script("400", "malformed", "500", "400")
    errors = []
    for send in (lambda: actors.complete.send_with_options(args=("hi",), max_retries=0),
                 lambda: actors.embed.send_with_options(args=(["a"],), kwargs={"cache": False}, max_retries=0),
                 lambda: actors.complete.send_with_options(args=("hi again",), max_retries=0),
                 lambda: actors.rerank.send_with_options(args=("q", ["a", "b"]), kwargs={"cache": False},
                                                         max_retries=0)):
        with pytest.raises(ResultFailure) as failed:
            send().get_result(block=True, timeout=15_000)
        errors.append(str(failed.value))
    assert any("400" in e for e in errors) and any("not JSON" in e for e in errors), errors
    assert fake.count() >= 4
    stored = dump(clean_db)
    assert "svc-user" in stored  # the provider state is still keyed by its (redacted) base URL
    assert PASSWORD not in stored
    assert PASSWORD not in "\n".join(errors)
    assert PASSWORD not in caplog.text
    assert "HTTP Request" in caplog.text  # httpx's request lines are kept, redacted


def test_an_unreachable_provider_leaks_the_password_nowhere(broker: PostgresBroker, clean_db: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed = probe.getsockname()[1]
    probe.close()
    truncate(clean_db, "llm")
    settings = LlmSettings(llm_provider="http", llm_timeout_ms=400,
                           llm_http_base_url=f"http://svc-user:{PASSWORD}@127.0.0.1:{closed}/v1")
    name = "neuron_tasks.llm.actors"
    module = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
    module.configure(settings, pool=broker.pool)
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        with pytest.raises(ResultFailure) as failed:
            module.complete.send_with_options(args=("hi",), max_retries=0).get_result(block=True, timeout=15_000)
    finally:
        worker.stop(timeout=5000)
    assert "127.0.0.1" in str(failed.value) and PASSWORD not in str(failed.value)
    assert PASSWORD not in dump(clean_db)
    assert PASSWORD not in caplog.text
