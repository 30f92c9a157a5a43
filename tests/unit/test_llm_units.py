"""LLM jobs, broker-free: header parsing, cache keys, allow-list, batching, settings."""

from __future__ import annotations

import threading
import time

import pytest

from neuron_tasks.llm.base import estimate_tokens
from neuron_tasks.llm.batcher import Batcher
from neuron_tasks.llm.cache import cache_key, normalise_text
from neuron_tasks.llm.pacing import RateLimits, parse_duration, parse_retry_after
from neuron_tasks.llm.settings import LlmSettings
from neuron_tasks.llm.tasks import host_allowed


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("20ms", 0.02), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("7", 7.0),
    ("", None), ("soon", None), ("5x", None),
])
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past


def test_rate_limit_headers() -> None:
    lim = RateLimits.from_headers({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
                                   "x-ratelimit-reset-requests": "1s", "x-ratelimit-remaining-tokens": "149984",
                                   "x-ratelimit-reset-tokens": "6m0s"})
    assert (lim.req_limit, lim.req_remaining, lim.req_reset_s) == (60, 59, 1.0)
    assert (lim.tok_limit, lim.tok_remaining, lim.tok_reset_s) == (None, 149984, 360.0)


def test_cache_key_normalises_input() -> None:
    assert normalise_text("  hello \n\t world ") == "hello world"
    key = cache_key("embed", "local:m", "hello world")
    assert key == cache_key("embed", "local:m", normalise_text(" hello  world"))
    assert cache_key("embed", "local:m", "a") != cache_key("embed", "local:other", "a")
    assert cache_key("complete", "m", {"a": 1, "b": 2}) == cache_key("complete", "m", {"b": 2, "a": 1})
    assert cache_key("complete", "m", "x") != cache_key("rerank", "m", "x")


def test_host_allow_list() -> None:
    allow = ["127.0.0.1", "api.example.com:8443", "*.trusted.org"]
    assert host_allowed("http://127.0.0.1:9000/x", allow)
    assert host_allowed("https://api.example.com:8443/v1", allow)
    assert not host_allowed("https://api.example.com/v1", allow)
    assert host_allowed("https://a.b.trusted.org/", allow)
    assert not host_allowed("https://trusted.org.evil.com/", allow)
    assert not host_allowed("http://localhost/", allow)
    assert not host_allowed("file:///etc/passwd", allow)
    assert not host_allowed("http://127.0.0.1/", [])


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURON_TASKS_LLM_HTTP_CALL_ALLOW_HOSTS", "Example.com, 127.0.0.1")
    monkeypatch.setenv("NEURON_TASKS_LLM_BATCH_SIZE", "32")
    s = LlmSettings()
    assert s.llm_http_call_allow_hosts == ["example.com", "127.0.0.1"]
    assert s.llm_batch_size == 32 and LlmSettings(llm_batch_size=10).llm_batch_size == 10
    assert estimate_tokens("abcd", "abcde") == 3


def test_batcher_merges_concurrent_requests_and_keeps_order() -> None:
    calls: list[list[int]] = []

    def run(requests: list[int]) -> list[int]:
        calls.append(list(requests))
        time.sleep(0.02)
        return [r * 10 for r in requests]

    batcher: Batcher[int] = Batcher(run, max_messages=5, linger_s=0.05)
    results: dict[int, int] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.submit(i))) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == {i: i * 10 for i in range(10)}
    assert sum(len(c) for c in calls) == 10
    assert len(calls) < 10 and max(len(c) for c in calls) <= 5


def test_batcher_error_reaches_every_caller() -> None:
    def run(requests: list[int]) -> list[int]:
        raise ValueError("model exploded")

    batcher: Batcher[int] = Batcher(run, max_messages=3, linger_s=0.0)
    with pytest.raises(ValueError, match="model exploded"):
        batcher.submit(1)
    assert batcher.calls == 1


def test_importing_the_actors_needs_no_database_nor_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, dramatiq\n"
        "from neuron_tasks import PostgresBroker, Settings\n"
        "url = 'postgresql://nobody@127.0.0.1:1/none'\n"
        "dramatiq.set_broker(PostgresBroker(url, settings=Settings(database_url=url)))\n"
        "import neuron_tasks.llm.actors\n"
        "print(sorted(dramatiq.get_broker().actors))\n"
        "print([m for m in ('torch', 'sentence_transformers', 'httpx') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    actors, heavy = out.stdout.strip().splitlines()
    assert "llm_embed" in actors and "sql_task" in actors and "http_call" in actors
    assert heavy == "[]"
