"""A fake OpenAI-compatible provider on 127.0.0.1, for tests, benchmarks and the demo.

It is a real HTTP server (http.server in a thread) that answers /v1/embeddings,
/v1/chat/completions and /v1/rerank with deterministic, clearly fake content, sends
x-ratelimit-* headers, can enforce a request limit per fixed window (answering 429 with
Retry-After), and can be scripted to fail: `script("429:2", "500", "timeout", "malformed",
"400", "ok")` makes the next requests fail that way, in order.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAKE_NOTE = "FAKE PROVIDER (canned replies, not a real LLM)"


def fake_vector(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [b / 255.0 - 0.5 for b in digest[:dims]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


class FakeProvider:
    def __init__(self, *, limit: int | None = None, window_s: float = 60.0, timeout_sleep_s: float = 5.0,
                 models: set[str] | None = None, port: int = 0) -> None:
        """`models`: the model names it knows (others get OpenAI's 404 "model does not exist");
        None knows every name. `port` on 127.0.0.1 (0: any free port)."""
        self.limit = limit
        self.models = models
        self.window_s = window_s
        self.timeout_sleep_s = timeout_sleep_s
        self.lock = threading.Lock()
        self.scripted: deque[str] = deque()
        self.requests: list[tuple[str, int]] = []  # (path, status)
        self._window_start = time.monotonic()
        self._window_count = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-provider", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> FakeProvider:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, *behaviours: str) -> None:
        with self.lock:
            self.scripted.extend(behaviours)

    def count(self, path: str | None = None, status: int | None = None) -> int:
        with self.lock:
            return sum(1 for p, s in self.requests if (path is None or path in p) and (status is None or s == status))

    # -- window accounting -----------------------------------------------------------------------
    def _admit(self) -> tuple[bool, dict[str, str]]:
        if self.limit is None:
            return True, {"x-ratelimit-limit-requests": "10000", "x-ratelimit-remaining-requests": "9999",
                          "x-ratelimit-reset-requests": "1ms"}
        now = time.monotonic()
        if now - self._window_start >= self.window_s:
            self._window_start, self._window_count = now, 0
        reset = max(self.window_s - (now - self._window_start), 0.001)
        admitted = self._window_count < self.limit
        if admitted:
            self._window_count += 1
        headers = {"x-ratelimit-limit-requests": str(self.limit),
                   "x-ratelimit-remaining-requests": str(self.limit - self._window_count),
                   "x-ratelimit-reset-requests": f"{reset:.3f}s"}
        if not admitted:
            headers["retry-after"] = str(max(1, math.ceil(reset)))
        return admitted, headers

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                      content_type: str = "application/json") -> None:
                with fake.lock:
                    fake.requests.append((self.path, status))
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
                self._send(status, json.dumps(value).encode(), headers)

            def do_GET(self) -> None:
                if self.path.startswith("/big"):
                    self._send(200, b"x" * 4096, content_type="text/plain")
                elif self.path.startswith("/slow"):
                    time.sleep(fake.timeout_sleep_s)
                    self._json(200, {"slow": True})
                else:
                    self._json(200, {"ok": True, "path": self.path})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._json(400, {"error": {"message": "request body is not JSON"}})
                    return
                with fake.lock:
                    behaviour = fake.scripted.popleft() if fake.scripted else "ok"
                    admitted, limits = fake._admit() if behaviour == "ok" else (True, {})
                if behaviour.startswith("429"):
                    after = behaviour.partition(":")[2] or "1"
                    self._json(429, {"error": {"message": "Rate limit reached (fake)"}}, {"retry-after": after})
                elif behaviour == "500":
                    self._json(500, {"error": {"message": "internal error (fake)"}})
                elif behaviour == "timeout":
                    time.sleep(fake.timeout_sleep_s)
                    self._json(200, {"late": True})
                elif behaviour == "malformed":
                    self._send(200, b'{"choices": [', content_type="application/json")
                elif behaviour == "400":
                    self._json(400, {"error": {"message": "Invalid 'max_tokens': must be positive (fake)"}})
                elif not admitted:
                    self._json(429, {"error": {"message": "Rate limit reached for requests (fake)"}}, limits)
                else:
                    self._answer(body, limits)

            def _answer(self, body: dict[str, Any], limits: dict[str, str]) -> None:
                path = self.path.rstrip("/")
                if fake.models is not None and body.get("model") not in fake.models:
                    self._json(404, {"error": {"message": f"The model `{body.get('model')}` does not exist (fake)",
                                               "code": "model_not_found"}})
                    return
                if path.endswith("/embeddings"):
                    texts = body.get("input")
                    texts = [texts] if isinstance(texts, str) else list(texts or [])
                    data = [{"object": "embedding", "index": i, "embedding": fake_vector(t)}
                            for i, t in enumerate(texts)]
                    tokens = sum(len(t.split()) for t in texts)
                    self._json(200, {"object": "list", "data": data, "model": body.get("model"),
                                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, limits)
                elif path.endswith("/chat/completions"):
                    messages = body.get("messages") or []
                    last = str(messages[-1].get("content", "")) if messages else ""
                    text = f"[{FAKE_NOTE}] you said: {last[:200]}"
                    prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
                    completion = len(text.split())
                    self._json(200, {"id": "fake", "object": "chat.completion", "model": body.get("model"),
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": text}}],
                                     "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                               "total_tokens": prompt + completion}}, limits)
                elif path.endswith("/rerank"):
                    query = set(str(body.get("query", "")).lower().split())
                    docs = [str(d) for d in body.get("documents") or []]
                    scores = [len(query & set(d.lower().split())) / (len(query) or 1) for d in docs]
                    order = sorted(range(len(docs)), key=lambda i: -scores[i])[: int(body.get("top_n") or len(docs))]
                    self._json(200, {"results": [{"index": i, "relevance_score": scores[i]} for i in order]}, limits)
                else:
                    self._json(404, {"error": {"message": f"no such endpoint {self.path} (fake)"}})

        return Handler
