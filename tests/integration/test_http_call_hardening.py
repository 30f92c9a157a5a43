"""http_call against real local servers (http.server in a thread): a total deadline (a slow-drip
server is cut at it), a cap on the decompressed body (a gzip bomb is cut at the cap, memory stays
small), the resolved address checked as well as the name (an allowed name resolving to loopback
is refused unless loopback is explicitly allowed), no Host header override, IPv6 entries."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from neuron_tasks.llm.errors import HostNotAllowed, InvalidRequest, ProviderUnavailable, ResponseTooLarge
from neuron_tasks.llm.settings import LlmSettings
from neuron_tasks.llm.tasks import host_allowed, http_call

MIB = 1024 * 1024


def _bomb(size: int) -> bytes:
    """`size` zero bytes, gzip-compressed (about a thousandth of the size)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MIB)
    return b"".join([*(packer.compress(block) for _ in range(size // MIB)), packer.flush()])


BOMB = _bomb(128 * MIB)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        Handler.seen.append(self.path)
        if self.path == "/drip":  # one byte every 100 ms, 60 bytes in all
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", "60")
            self.end_headers()
            try:
                for _ in range(60):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
            return
        if self.path == "/bomb":
            self._send(BOMB, {"content-encoding": "gzip", "content-type": "application/octet-stream"})
            return
        if self.path == "/small-gzip":
            self._send(gzip.compress(json.dumps({"ok": True, "pad": "y" * 5000}).encode()),
                       {"content-encoding": "gzip", "content-type": "application/json"})
            return
        self._send(json.dumps({"path": self.path, "host": self.headers.get("host")}).encode(),
                   {"content-type": "application/json"})

    def _send(self, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass


class V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@contextmanager
def serve(host: str = "127.0.0.1") -> Iterator[int]:
    server = (V6Server if ":" in host else ThreadingHTTPServer)((host, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def port() -> Iterator[int]:
    Handler.seen = []
    with serve() as p:
        yield p


def settings(**values: Any) -> LlmSettings:
    return LlmSettings(**{"llm_http_call_allow_hosts": ["127.0.0.1"], "llm_http_call_timeout_s": 1.0, **values})


def test_a_slow_drip_ends_at_the_total_deadline(port: int) -> None:
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match=r"1\.0 s"):
        http_call("GET", f"http://127.0.0.1:{port}/drip", settings=settings())
    assert time.monotonic() - started < 1.6
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable):  # the message may only shorten it
        http_call("GET", f"http://127.0.0.1:{port}/drip", settings=settings(), timeout_s=0.3)
    assert time.monotonic() - started < 0.9


def test_a_slow_name_lookup_ends_at_the_total_deadline(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuron_tasks.llm import tasks

    real = socket.getaddrinfo

    def slow_lookup(*args: Any, **kwargs: Any) -> Any:  # a resolver that hangs for 5 s
        time.sleep(5)
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks.socket, "getaddrinfo", slow_lookup)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable):
        http_call("GET", f"http://127.0.0.1:{port}/x", settings=settings(), timeout_s=0.5)
    assert time.monotonic() - started < 3  # not the 5 s the lookup takes


def test_a_gzip_bomb_is_cut_at_the_cap(port: int) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ResponseTooLarge, match="cap of 1048576"):
            http_call("GET", f"http://127.0.0.1:{port}/bomb", settings=settings(llm_http_call_max_bytes=MIB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB, f"{peak / MIB:.0f} MiB allocated for a 1 MiB cap"


def test_a_small_compressed_answer_is_decoded(port: int) -> None:
    out = http_call("GET", f"http://127.0.0.1:{port}/small-gzip", settings=settings())
    assert out["status"] == 200 and out["json"]["ok"] is True and len(out["json"]["pad"]) == 5000


def test_an_allowed_name_resolving_to_loopback_is_refused_unless_loopback_is_allowed(port: int) -> None:
    with pytest.raises(HostNotAllowed, match=r"127\.0\.0\.1"):
        http_call("GET", f"http://localhost:{port}/x", settings=settings(llm_http_call_allow_hosts=["localhost"]))
    assert Handler.seen == []
    with pytest.raises(HostNotAllowed):
        http_call("GET", f"http://localhost:{port}/x",
                  settings=settings(llm_http_call_allow_hosts=[f"localhost:{port}"]))
    allowed = settings(llm_http_call_allow_hosts=["localhost"], llm_http_call_allow_networks=["127.0.0.0/8", "::1"])
    out = http_call("GET", f"http://localhost:{port}/x", settings=allowed)
    assert out["status"] == 200 and out["json"]["path"] == "/x"
    assert LlmSettings(llm_http_call_allow_networks="10.0.0.0/8, ::1").llm_http_call_allow_networks == [
        "10.0.0.0/8", "::1"]


@pytest.mark.parametrize("url", ["http://0.0.0.0:{port}/x", "http://2130706433:{port}/x", "http://127.1:{port}/x"])
def test_addresses_that_reach_this_machine_by_another_spelling_are_refused(port: int, url: str) -> None:
    allow = ["0.0.0.0", "2130706433", "127.1", "localhost"]  # 0.0.0.0 is refused even when listed
    with pytest.raises((HostNotAllowed, InvalidRequest)):
        http_call("GET", url.format(port=port), settings=settings(llm_http_call_allow_hosts=allow))
    assert Handler.seen == []


def test_a_host_header_override_is_refused(port: int) -> None:
    for name in ("Host", "host", "HOST"):
        with pytest.raises(InvalidRequest, match="Host"):
            http_call("GET", f"http://127.0.0.1:{port}/x", headers={name: "internal.example"}, settings=settings())
    assert Handler.seen == []
    out = http_call("GET", f"http://127.0.0.1:{port}/x", headers={"X-Trace": "1"}, settings=settings())
    assert out["json"]["host"] == f"127.0.0.1:{port}"


def test_ipv6_entries_match_the_allow_list() -> None:
    assert host_allowed("http://[::1]:8080/x", ["[::1]:8080"])
    assert host_allowed("http://[::1]:8080/x", ["[::1]"])
    assert host_allowed("http://[::1]:8080/x", ["::1"])
    assert host_allowed("http://[2001:db8::1]/x", ["2001:DB8:0::1"])
    assert not host_allowed("http://[::1]:8080/x", ["[::1]:9090"])
    assert not host_allowed("http://[::2]/x", ["::1"])
    assert host_allowed("https://api.example.com/x", ["*.example.com"])
    assert not host_allowed("https://badexample.com/x", ["*.example.com"])
    assert host_allowed("https://example.com:8443/x", ["example.com:8443"])
    assert not host_allowed("https://example.com/x", ["example.com:8443"])


def test_an_ipv6_literal_entry_reaches_its_server() -> None:
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    Handler.seen = []
    with serve("::1") as v6port:
        out = http_call("GET", f"http://[::1]:{v6port}/six", settings=settings(llm_http_call_allow_hosts=["[::1]"]))
        assert out["status"] == 200 and out["json"]["path"] == "/six"
        out = http_call("GET", f"http://[::1]:{v6port}/six",
                        settings=settings(llm_http_call_allow_hosts=[f"[::1]:{v6port}"]))
        assert out["status"] == 200
