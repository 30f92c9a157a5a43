"""The HTTP provider: any OpenAI-compatible endpoint (/embeddings, /chat/completions) and a
/rerank endpoint of the common shape (query, documents, top_n) served by TEI, Jina or
Cohere-compatible servers.

Every call goes through the shared `Pacer` (rate-limit headers, Retry-After, circuit breaker).
429, 5xx, timeouts and connection errors raise transient errors (retried); other 4xx raise
ProviderRejected with the provider's message and malformed replies MalformedReply (both go
straight to the dead letters).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from neuron_tasks.db import redact
from neuron_tasks.llm.base import Completion, Embeddings, Ranking, Usage, estimate_tokens
from neuron_tasks.llm.errors import MalformedReply, ProviderRejected, ProviderUnavailable, RateLimited
from neuron_tasks.llm.pacing import Pacer, RateLimits, parse_retry_after
from neuron_tasks.llm.settings import LlmSettings

_clients: dict[str, httpx.Client] = {}
_clients_lock = threading.Lock()
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s@?#]+)@")
#: httpx logs every request's URL at INFO ("HTTP Request: POST http://user:password@host/..."),
#: httpcore its connections at DEBUG.
LOGGERS = ("httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy")


def scrub(text: str) -> str:
    """`text` with the userinfo of every URL in it masked (user:***@, or ***@ for a bare token)."""
    def mask(m: re.Match[str]) -> str:
        user, sep, _ = m.group(2).partition(":")
        return f"{m.group(1)}{user}:***@" if sep else f"{m.group(1)}***@"

    return _USERINFO.sub(mask, text)


class _RedactUrls(logging.Filter):
    """Masks credentials in URLs of the log records of the logger it is added to."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's to report
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = _RedactUrls()


def install_log_redaction() -> None:
    """Mask URL credentials in httpx's and httpcore's log records (idempotent)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


install_log_redaction()


def client_for(base_url: str, timeout_s: float) -> httpx.Client:
    """One pooled, thread-safe client per base URL and process."""
    with _clients_lock:
        c = _clients.get(base_url)
        if c is None:
            c = _clients[base_url] = httpx.Client(
                timeout=httpx.Timeout(timeout_s), follow_redirects=False,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            )
        return c


def provider_message(response: httpx.Response) -> str:
    """The provider's error text: OpenAI's error.message, else the body (shortened)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err[:500]
        for key in ("message", "detail"):
            if body.get(key):
                return str(body[key])[:500]
    return json.dumps(body)[:500]


def _usage(body: dict[str, Any], fallback: int) -> Usage:
    u = body.get("usage") if isinstance(body.get("usage"), dict) else None
    if not u:
        return Usage(prompt_tokens=fallback, estimated=True)
    prompt = u.get("prompt_tokens", u.get("input_tokens", u.get("total_tokens", 0)))
    completion = u.get("completion_tokens", u.get("output_tokens", 0))
    return Usage(prompt_tokens=int(prompt or 0), completion_tokens=int(completion or 0))


class HttpProvider:
    name = "http"

    def __init__(self, settings: LlmSettings, pacer: Pacer) -> None:
        if not settings.llm_http_base_url:
            raise ProviderRejected(
                "no HTTP provider configured: set NEURON_TASKS_LLM_HTTP_BASE_URL to an OpenAI-compatible "
                "base URL (e.g. https://api.openai.com/v1)"
            )
        self.settings = settings
        self.pacer = pacer
        self.base_url = settings.llm_http_base_url.rstrip("/")
        self.rerank_url = settings.llm_http_rerank_url or f"{self.base_url}/rerank"
        #: What is shown and stored (provider state key, errors): the URL without its credentials.
        self.shown_url = redact(self.base_url)
        self.key = self.shown_url
        self._secrets = _secrets_of(self.base_url, self.rerank_url)
        self.client = client_for(self.base_url, settings.llm_timeout_ms / 1000.0)

    def _clean(self, text: str) -> str:
        """Error text as it may be stored and shown: no URL credentials, no password anywhere."""
        text = scrub(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _shown(self, url: str) -> str:
        return self._clean(redact(url))

    def default_model(self, operation: str) -> str:
        s = self.settings
        return {"embed": s.llm_http_embed_model, "rerank": s.llm_http_rerank_model}.get(operation, s.llm_http_model)

    # -- the one place that talks HTTP ------------------------------------------------------
    def post(self, url: str, payload: dict[str, Any], *, tokens: int) -> Any:
        """POST JSON under the shared pacing; the decoded JSON body of a 2xx answer."""
        self.pacer.before(self.key, tokens)
        headers = {"content-type": "application/json"}
        key = self.settings.api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        shown = self._shown(url)
        try:
            response = self.client.post(url, json=payload, headers=headers)
        except httpx.TimeoutException as exc:
            text = f"{shown}: no answer within {self.settings.llm_timeout_ms} ms ({type(exc).__name__})"
            self.pacer.observe(self.key, None, outcome="failure", error=text)
            raise ProviderUnavailable(text) from None
        except httpx.HTTPError as exc:
            text = self._clean(f"{shown}: {type(exc).__name__}: {exc}")
            self.pacer.observe(self.key, None, outcome="failure", error=text)
            raise ProviderUnavailable(text) from None
        limits = RateLimits.from_headers(response.headers)
        status = response.status_code
        if status == 429:
            retry_after = parse_retry_after(response.headers)
            text = self._clean(f"{shown}: 429 rate limited: {provider_message(response)}")
            self.pacer.observe(self.key, limits, outcome="throttled", retry_after_s=retry_after, error=text)
            raise RateLimited(text, retry_after_s=retry_after)
        if status >= 500:
            retry_after = parse_retry_after(response.headers)
            text = self._clean(f"{shown}: {status} from provider: {provider_message(response)}")
            self.pacer.observe(self.key, limits, outcome="failure", error=text)
            raise ProviderUnavailable(text, retry_after_s=retry_after)
        if status >= 400:
            self.pacer.observe(self.key, limits, outcome="ok")
            raise ProviderRejected(self._clean(f"{shown}: {status} from provider: {provider_message(response)}"))
        try:
            body = response.json()
        except ValueError:
            text = self._clean(f"{shown}: reply is not JSON: {response.text[:200]!r}")
            self.pacer.observe(self.key, limits, outcome="failure", error=text)
            raise MalformedReply(text) from None
        self.pacer.observe(self.key, limits, outcome="ok")
        return body

    def _malformed(self, what: str, body: Any) -> MalformedReply:
        return MalformedReply(self._clean(f"{self.shown_url}: malformed {what} reply: {json.dumps(body)[:300]}"))

    # -- operations ---------------------------------------------------------------------------
    def embed(self, texts: list[str], model: str) -> Embeddings:
        import numpy as np

        tokens = estimate_tokens(*texts)
        body = self.post(f"{self.base_url}/embeddings", {"model": model, "input": texts}, tokens=tokens)
        try:
            data = sorted(body["data"], key=lambda d: d["index"])
            vectors = np.asarray([d["embedding"] for d in data], dtype=np.float32)
        except (KeyError, TypeError, ValueError):
            raise self._malformed("embeddings", body) from None
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise self._malformed("embeddings", body)
        return Embeddings(vectors, str(body.get("model") or model), _usage(body, tokens))

    def complete(
        self, messages: list[dict[str, Any]], model: str, *, max_tokens: int, temperature: float,
        extra: dict[str, Any],
    ) -> Completion:
        tokens = estimate_tokens(*(str(m.get("content", "")) for m in messages))
        payload = {**extra, "model": model, "messages": messages, "max_tokens": max_tokens,
                   "temperature": temperature}
        body = self.post(f"{self.base_url}/chat/completions", payload, tokens=tokens + max_tokens)
        try:
            choice = body["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (KeyError, IndexError, TypeError):
            raise self._malformed("chat completion", body) from None
        return Completion(text, str(body.get("model") or model), _usage(body, tokens), choice.get("finish_reason"))

    def rerank(self, query: str, documents: list[str], model: str, top_n: int) -> Ranking:
        tokens = estimate_tokens(query, *documents)
        payload = {"model": model, "query": query, "documents": documents, "top_n": top_n}
        body = self.post(self.rerank_url, payload, tokens=tokens)
        items = body.get("results") if isinstance(body, dict) else body
        if items is None:
            raise self._malformed("rerank", body)
        try:
            pairs = [(int(r["index"]), float(r.get("relevance_score", r.get("score")))) for r in items]
        except (KeyError, TypeError, ValueError):
            raise self._malformed("rerank", body) from None
        if any(not 0 <= i < len(documents) for i, _ in pairs):
            raise self._malformed("rerank", body)
        pairs.sort(key=lambda p: -p[1])
        usage = _usage(body, tokens) if isinstance(body, dict) else Usage(prompt_tokens=tokens, estimated=True)
        return Ranking(pairs[:top_n], model, usage, method="provider /rerank")


def _secrets_of(*urls: str) -> list[str]:
    """The passwords (as written and decoded) in the userinfo of these URLs, longest first."""
    found: set[str] = set()
    for url in urls:
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            found.update({password, unquote(password)})
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)
