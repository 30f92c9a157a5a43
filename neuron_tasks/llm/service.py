"""The plain functions behind the LLM actors: embed, complete, rerank, cache refresh.

`LlmService` holds what one process needs (pool, settings, providers, cache, pacer); every
method works without a broker. Each call records its token usage per job and tenant.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

from neuron_tasks import db
from neuron_tasks.llm import encoding
from neuron_tasks.llm.base import Provider, Usage
from neuron_tasks.llm.cache import Cache, Entry, cache_key, normalise_text
from neuron_tasks.llm.cache import store as store_entries
from neuron_tasks.llm.errors import InvalidRequest, MalformedReply
from neuron_tasks.llm.pacing import Pacer
from neuron_tasks.llm.settings import LlmSettings
from neuron_tasks.llm.usage import UsageRow, record_usage_many
from neuron_tasks.sql import q


@dataclass(slots=True)
class EmbedRequest:
    texts: list[str]
    model: str | None = None
    provider: str | None = None
    tenant: str | None = None
    message_id: str | None = None
    use_cache: bool = True  # read the cache (False: compute every text again)
    store: bool = True  # write what was computed to the cache
    encoding: str = "json"  # how the result carries its vectors: json, f32 or array (llm/encoding.py)


@dataclass(frozen=True, slots=True)
class RefreshCandidate:
    """A cache entry about to expire: its key, "provider:model" label and stored input."""

    key: bytes
    model: str
    input: Any


def _vector_json(vectors: Any) -> list[list[float]]:
    """Rows as lists of floats rounded to 7 decimals (the "json" encoding)."""
    return encoding.vectors_json(vectors)


def _packed(rows: list[Any], how: str) -> dict[str, Any]:
    """`dims`, and the vectors of one request in the encoding it asked for."""
    import numpy as np

    matrix = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    dims = int(matrix.shape[1]) if matrix.size else 0
    if how == "f32":
        return {"dims": dims, "count": len(rows), "encoding": "f32", "embeddings_f32": encoding.f32_text(matrix)}
    if how == "array":
        return {"dims": dims, "embeddings": matrix}
    return {"dims": dims, "embeddings": _vector_json(matrix)}


class LlmService:
    def __init__(self, pool: ConnectionPool, settings: LlmSettings | None = None) -> None:
        self.pool = pool
        self.settings = settings or LlmSettings()
        self.cache = Cache(pool, self.settings)
        self.pacer = Pacer(pool, self.settings)
        self._providers: dict[str, Provider] = {}

    # -- providers ------------------------------------------------------------------------------
    def provider(self, name: str | None) -> Provider:
        name = name or self.settings.llm_provider
        found = self._providers.get(name)
        if found is None:
            if name == "local":
                from neuron_tasks.llm.local import LocalProvider

                found = LocalProvider(self.settings)
            elif name == "http":
                from neuron_tasks.llm.http import HttpProvider

                found = HttpProvider(self.settings, self.pacer)
            else:
                raise InvalidRequest(f"unknown provider {name!r}: use 'local' or 'http'")
            self._providers[name] = found
        return found

    def use_provider(self, provider: Provider) -> None:
        """Serve messages that name `provider.name` with this provider (benchmarks register a
        no-cost embedder this way; "local" and "http" are built on first use)."""
        self._providers[provider.name] = provider

    def _record(self, rows: list[UsageRow]) -> None:
        with self.pool.connection() as conn:
            record_usage_many(conn, rows, wait_flush=False)

    # -- embed ------------------------------------------------------------------------------------
    def embed(self, texts: list[str] | str, *, model: str | None = None, provider: str | None = None,
              tenant: str | None = None, message_id: str | None = None, use_cache: bool = True,
              encoding: str = "json") -> dict[str, Any]:
        """Embeddings of `texts` (one vector per text, unit length for the local model); `encoding`
        "json" (lists of floats), "f32" (base64 float32) or "array" (a numpy matrix)."""
        if isinstance(texts, str):
            texts = [texts]
        return self.embed_many([EmbedRequest(list(texts), model, provider, tenant, message_id, use_cache,
                                             encoding=encoding)])[0]

    def embed_many(self, requests: list[EmbedRequest],
                   release: Callable[[], None] | None = None) -> list[dict[str, Any]]:
        """Several embed requests with one cache lookup and one model call per (provider, model),
        then one round trip that writes the new cache entries and every request's usage row:
        the cross-message batcher hands its groups here, with `release`, called once the model
        calls are over, before the writes."""
        import numpy as np

        for r in requests:
            if not isinstance(r.texts, list) or not all(isinstance(t, str) for t in r.texts):
                raise InvalidRequest("embed: texts must be a list of strings")
            encoding.check(r.encoding)
        out: list[dict[str, Any] | None] = [None] * len(requests)
        usage: list[UsageRow] = []
        entries: list[Entry] = []
        groups: dict[tuple[str, str], list[int]] = {}
        for i, r in enumerate(requests):
            p = self.provider(r.provider)
            groups.setdefault((p.name, r.model or p.default_model("embed")), []).append(i)
        for (pname, model), idxs in groups.items():
            p = self.provider(pname)
            label = f"{pname}:{model}"
            norm = {i: [normalise_text(t) for t in requests[i].texts] for i in idxs}
            keys = {t: cache_key("embed", label, t) for i in idxs for t in norm[i]}
            wanted = [keys[t] for i in idxs if requests[i].use_cache for t in norm[i]]
            found = self.cache.get_many(wanted)
            vectors: dict[str, Any] = {}
            for t, k in keys.items():
                if k in found:
                    vectors[t] = np.frombuffer(found[k], dtype=np.float32)
            cached_texts = set(vectors)
            fresh = {t for i in idxs if not requests[i].use_cache for t in norm[i]}
            misses = [t for t in keys if t not in vectors or t in fresh]
            computed_usage = Usage()
            if misses:
                result = p.embed(misses, model)
                computed_usage = result.usage
                arr = np.asarray(result.vectors, dtype=np.float32)
                if arr.shape[0] != len(misses):
                    raise MalformedReply(f"embed: the provider returned {arr.shape[0]} vectors for "
                                         f"{len(misses)} texts")
                storing = {t for i in idxs if requests[i].store for t in norm[i]}
                for t, v in zip(misses, arr, strict=True):
                    vectors[t] = v
                    cached_texts.discard(t)
                    if t in storing:
                        entries.append(Entry(keys[t], "embed", label, {"text": t}, v.tobytes()))
            miss_chars = sum(len(t) for t in misses) or 1
            for i in idxs:
                r = requests[i]
                mine = [t for t in dict.fromkeys(norm[i]) if t not in cached_texts]
                share = sum(len(t) for t in mine) / miss_chars
                tokens = round(computed_usage.prompt_tokens * share)
                hits = sum(1 for t in norm[i] if t in cached_texts)
                out[i] = {"model": label, **_packed([vectors[t] for t in norm[i]], r.encoding),
                          "cached": hits, "tokens": tokens}
                usage.append(UsageRow(r.tenant, tokens, tokens, 0, computed_usage.estimated,
                                      bool(norm[i]) and hits == len(norm[i]), "embed", pname, model, r.message_id))
        if release is not None:
            release()
        self._write(entries, usage)
        return [o for o in out if o is not None]

    def _write(self, entries: list[Entry], usage: list[UsageRow]) -> None:
        """New cache entries and usage rows in one round trip (a pipeline of two statements)."""
        if not self.cache.enabled:
            entries = []
        if not entries and not usage:
            return

        def run() -> None:
            with self.pool.connection() as conn, conn.pipeline():
                if entries:
                    store_entries(conn, entries, self.settings.llm_cache_ttl_s)
                record_usage_many(conn, usage, wait_flush=False)

        db.retrying(run, what="embed cache and usage write")

    # -- complete -----------------------------------------------------------------------------
    def complete(self, prompt: str | None = None, *, messages: list[dict[str, Any]] | None = None,
                 model: str | None = None, provider: str | None = None, max_tokens: int = 256,
                 temperature: float = 0.0, cache: bool | None = None, refresh: bool = False,
                 tenant: str | None = None, message_id: str | None = None, **extra: Any) -> dict[str, Any]:
        """A chat completion. Cached when temperature is 0, or when `cache=True` is passed;
        `refresh` skips the lookup and stores a fresh answer."""
        if messages is None:
            if prompt is None:
                raise InvalidRequest("complete: pass a prompt or messages")
            messages = [{"role": "user", "content": prompt}]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise InvalidRequest("complete: messages must be a list of {role, content} objects")
        p = self.provider(provider)
        model = model or p.default_model("complete")
        label = f"{p.name}:{model}"
        use_cache = (temperature == 0) if cache is None else cache
        norm_input = {"messages": [{**m, "content": normalise_text(str(m.get("content", "")))} for m in messages],
                      "max_tokens": max_tokens, "temperature": temperature, "extra": extra}
        key = cache_key("complete", label, norm_input)
        if use_cache and not refresh:
            hit = self.cache.get_many([key]).get(key)
            if hit is not None:
                value = json.loads(hit)
                self._record([UsageRow(tenant, 0, 0, 0, False, True, "complete", p.name, model, message_id)])
                return {**value, "cached": True}
        done = p.complete(messages, model, max_tokens=max_tokens, temperature=temperature, extra=extra)
        u = done.usage
        value = {"model": label, "text": done.text, "finish_reason": done.finish_reason,
                 "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                           "total_tokens": u.tokens, "estimated": u.estimated}}
        if use_cache:
            self.cache.put_many([Entry(key, "complete", label, norm_input, json.dumps(value).encode())])
        self._record([UsageRow(tenant, u.tokens, u.prompt_tokens, u.completion_tokens, u.estimated, False,
                               "complete", p.name, model, message_id)])
        return {**value, "cached": False}

    # -- rerank -------------------------------------------------------------------------------
    def rerank(self, query: str, documents: list[str], *, top_n: int | None = None, model: str | None = None,
               provider: str | None = None, use_cache: bool = True, refresh: bool = False,
               tenant: str | None = None, message_id: str | None = None) -> dict[str, Any]:
        """Documents ordered by relevance to `query`: [{index, score, document}], best first;
        `refresh` skips the cache lookup and stores a fresh answer."""
        if not isinstance(query, str) or not isinstance(documents, list) or not all(
                isinstance(d, str) for d in documents):
            raise InvalidRequest("rerank: query is a string and documents a list of strings")
        top_n = len(documents) if top_n is None else max(0, min(int(top_n), len(documents)))
        p = self.provider(provider)
        model = model or p.default_model("rerank")
        label = f"{p.name}:{model}"
        norm_input = {"query": normalise_text(query), "documents": [normalise_text(d) for d in documents],
                      "top_n": top_n}
        key = cache_key("rerank", label, norm_input)
        if use_cache and not refresh:
            hit = self.cache.get_many([key]).get(key)
            if hit is not None:
                self._record([UsageRow(tenant, 0, 0, 0, False, True, "rerank", p.name, model, message_id)])
                return {**json.loads(hit), "cached": True}
        ranking = p.rerank(query, documents, model, top_n) if documents else None
        results = [{"index": i, "score": s, "document": documents[i]} for i, s in (ranking.results if ranking else [])]
        u = ranking.usage if ranking else Usage()
        value = {"model": label, "results": results, "method": ranking.method if ranking else "empty"}
        if use_cache:
            self.cache.put_many([Entry(key, "rerank", label, norm_input, json.dumps(value).encode())])
        self._record([UsageRow(tenant, u.tokens, u.prompt_tokens, u.completion_tokens, u.estimated, False,
                               "rerank", p.name, model, message_id)])
        return {**value, "cached": False}

    # -- cache refresh ------------------------------------------------------------------------
    def refresh_cache(self, *, operation: str = "embed", within_s: float = 86400.0, limit: int = 1000) -> int:
        """Recompute the most used entries of `operation` expiring within `within_s` from their
        stored input, with the same provider and model; returns how many were refreshed."""
        if operation not in ("embed", "complete", "rerank"):
            raise InvalidRequest(f"cache_refresh: unknown operation {operation!r}; use embed, complete or rerank")
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(RefreshCandidate)) as cur:
            rows = cur.execute(q("cache_refresh_candidates"),
                               {"operation": operation, "within_s": within_s, "limit": limit}).fetchall()
        if operation == "embed":
            by_model: dict[str, list[str]] = {}
            for row in rows:
                by_model.setdefault(row.model, []).append(row.input["text"])
            for label, texts in by_model.items():
                pname, _, model = label.partition(":")
                self.embed_many([EmbedRequest(texts, model, pname, None, None, use_cache=False)])
            return len(rows)
        for row in rows:
            inp = row.input
            pname, _, model = row.model.partition(":")
            if operation == "complete":
                self.complete(messages=inp["messages"], model=model, provider=pname, cache=True, refresh=True,
                              max_tokens=inp["max_tokens"], temperature=inp["temperature"], **inp["extra"])
            else:
                self.rerank(inp["query"], inp["documents"], top_n=inp["top_n"], model=model, provider=pname,
                            refresh=True)
        return len(rows)
