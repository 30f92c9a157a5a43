"""`neuron-tasks llm`: embed, complete and rerank jobs, the LLM job view, token usage, provider
state, the result cache (`llm cache stats|clear|rotate`) and a fake OpenAI-compatible provider."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import psycopg
import typer
from psycopg.rows import dict_row

from neuron_tasks.commandline import (
    JsonOpt,
    YesOpt,
    confirm_destructive,
    console,
    emit,
    fail,
    jsonable,
    parse_duration,
    pool,
)
from neuron_tasks.sql import q

app = typer.Typer(
    help="LLM and queue jobs: embeddings, completions, reranking (local sentence-transformers or an\n"
    "OpenAI-compatible HTTP provider), their job view, token usage per tenant, shared provider state\n"
    "(rate limits, circuit breaker) and the Postgres result cache.\n\n"
    "Jobs run on workers: `neuron-tasks worker`. Provider settings come from\n"
    "NEURON_TASKS_LLM_* (e.g. NEURON_TASKS_LLM_HTTP_BASE_URL, NEURON_TASKS_LLM_HTTP_API_KEY).",
    no_args_is_help=True,
)
cache_app = typer.Typer(help="The result cache: stats, clear, rotate (expire + LRU eviction).",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")

#: The operations the result cache keeps entries of.
CACHE_OPERATIONS = ("embed", "complete", "rerank")

ModelOpt = Annotated[str | None, typer.Option("--model", help="Model name (default: from settings).")]
ProviderOpt = Annotated[str | None, typer.Option("--provider", help="local or http (default: from settings).")]
TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Tenant charged for the tokens.")]
InlineOpt = Annotated[bool, typer.Option("--inline", help="Run here instead of as a job on a worker.")]
WaitOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the job's result.")]


def _run(actor_name: str, kwargs: dict[str, Any], *, inline: bool, timeout: float, tenant: str | None) -> Any:
    """Run an LLM operation inline, or send it as a job and wait for its result."""
    import dramatiq
    from dramatiq.results.errors import ResultFailure, ResultTimeout

    from neuron_tasks.commandline import database_url, settings
    from neuron_tasks.core.broker import PostgresBroker

    broker = PostgresBroker(database_url(), settings=settings())
    dramatiq.set_broker(broker)
    from neuron_tasks.llm import actors as actors

    # dramatiq ships no type information: its actors are Any to mypy.
    actor: Any = {"llm_embed": actors.embed, "llm_complete": actors.complete, "llm_rerank": actors.rerank}[actor_name]
    try:
        if inline:
            actors.configure()
            if actor_name == "llm_embed":
                return actors.runtime().service.embed(kwargs.pop("texts"), tenant=tenant, **kwargs)
            return actor.fn(**kwargs, tenant=tenant)
        message = actor.send_with_options(kwargs={**kwargs, "tenant": tenant}, tenant=tenant)
        try:
            return message.get_result(block=True, timeout=int(timeout * 1000))
        except ResultTimeout:
            fail(f"no result within {timeout:.0f}s (job {message.message_id} is queued); is a worker running? "
                 "start one with `neuron-tasks worker`, or pass --inline")
        except ResultFailure as exc:
            fail(f"job {message.message_id} failed: {exc}")
    finally:
        broker.close()


@app.command()
def embed(texts: Annotated[list[str], typer.Argument(help="Texts to embed.")], model: ModelOpt = None,
          provider: ProviderOpt = None, tenant: TenantOpt = None, inline: InlineOpt = False,
          timeout: WaitOpt = 60.0, as_json: JsonOpt = False) -> None:
    """Embed texts (a job, or --inline); prints dimensions and the first values."""
    out = _run("llm_embed", {"texts": texts, "model": model, "provider": provider}, inline=inline,
               timeout=timeout, tenant=tenant)
    if as_json:
        print(json.dumps(out))
        return
    console.print(f"model {out['model']}, {out['dims']} dimensions, {out['cached']} from cache, {out['tokens']} tokens")
    for text, vec in zip(texts, out["embeddings"], strict=True):
        console.print(f"  {text[:40]!r}: [{', '.join(f'{x:.3f}' for x in vec[:4])}, ...]", highlight=False)


@app.command()
def complete(prompt: Annotated[str, typer.Argument(help="The user prompt.")], model: ModelOpt = None,
             provider: ProviderOpt = None, max_tokens: Annotated[int, typer.Option(help="Completion cap.")] = 256,
             temperature: Annotated[float, typer.Option(help="0 = cacheable.")] = 0.0, tenant: TenantOpt = None,
             inline: InlineOpt = False, timeout: WaitOpt = 60.0, as_json: JsonOpt = False) -> None:
    """A chat completion through the HTTP provider (a job, or --inline)."""
    out = _run("llm_complete", {"prompt": prompt, "model": model, "provider": provider or "http",
                                "max_tokens": max_tokens, "temperature": temperature},
               inline=inline, timeout=timeout, tenant=tenant)
    if as_json:
        print(json.dumps(out))
        return
    console.print(out["text"], highlight=False)
    console.print(f"[dim]{out['model']}, tokens {out['usage']['total_tokens']}, cached {out['cached']}[/]")


@app.command()
def rerank(query: Annotated[str, typer.Argument(help="The query.")],
           documents: Annotated[list[str], typer.Argument(help="Documents to order.")],
           top_n: Annotated[int | None, typer.Option("--top-n", help="Keep the best N.")] = None,
           model: ModelOpt = None, provider: ProviderOpt = None, tenant: TenantOpt = None,
           inline: InlineOpt = False, timeout: WaitOpt = 60.0, as_json: JsonOpt = False) -> None:
    """Order documents by relevance to a query (a job, or --inline)."""
    out = _run("llm_rerank", {"query": query, "documents": documents, "top_n": top_n, "model": model,
                              "provider": provider}, inline=inline, timeout=timeout, tenant=tenant)
    if as_json:
        print(json.dumps(out))
        return
    emit(out["results"], ["index", "score", "document"], as_json=False, title=f"{out['model']} ({out['method']})")


@app.command()
def jobs(failed: Annotated[int, typer.Option(help="How many failed jobs to list.")] = 10,
         as_json: JsonOpt = False) -> None:
    """The LLM job view: per operation and status, count and average seconds; the latest failures."""
    with pool().connection() as conn:
        status = _dicts(conn, "llm_job_status")
        failures = _dicts(conn, "llm_failed_jobs", {"limit": failed})
    if as_json:
        print(json.dumps(jsonable({"status": status, "failed": failures}), indent=2))
        return
    emit(status, ["operation", "status", "count", "avg_seconds"], as_json=False, title="LLM jobs")
    emit(failures, ["job_id", "operation", "model_name", "tenant", "error_message", "retry_count"],
         as_json=False, title="Failed LLM jobs")


@app.command()
def usage(tenant: TenantOpt = None, since: Annotated[str, typer.Option(help="Window, e.g. 1h, 1d, 30d.")] = "1d",
          as_json: JsonOpt = False) -> None:
    """Tokens used per tenant and operation (recorded per job; local models are estimated)."""
    start = datetime.now(UTC) - timedelta(seconds=parse_duration(since) or 86400)
    with pool().connection() as conn:
        rows = _dicts(conn, "usage_by_tenant", {"since": start, "tenant": tenant})
    emit(rows, ["tenant", "operation", "jobs", "tokens", "prompt_tokens", "completion_tokens", "cached",
                "estimated"], as_json=as_json, title=f"LLM token usage since {start:%Y-%m-%d %H:%M} UTC")


@app.command()
def providers(as_json: JsonOpt = False) -> None:
    """Shared provider state: rate-limit window, Retry-After block, circuit breaker, 429 count."""
    with pool().connection() as conn:
        rows = _dicts(conn, "provider_states")
    emit(rows, ["provider", "requests_remaining", "requests_reset_at", "tokens_remaining", "blocked_until",
                "failures", "open_until", "trips", "calls", "throttled", "last_error"],
         as_json=as_json, title="LLM providers")


@app.command("fake-provider")
def fake_provider(port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 = any).")] = 0,
                  limit: Annotated[int | None, typer.Option(help="Requests allowed per window.")] = None,
                  window: Annotated[float, typer.Option(help="Window length, seconds.")] = 60.0) -> None:
    """Serve a FAKE OpenAI-compatible provider on 127.0.0.1 until Ctrl-C (tests and demos)."""
    from neuron_tasks.testing.fake_llm import FakeProvider

    fake = FakeProvider(limit=limit, window_s=window, port=port)
    console.print(f"fake provider (canned replies) at {fake.base_url}; set NEURON_TASKS_LLM_HTTP_BASE_URL to it")
    try:
        fake.server.serve_forever()
    except KeyboardInterrupt:
        pass


@cache_app.command("stats")
def cache_stats(as_json: JsonOpt = False) -> None:
    """Entries, bytes and hits per operation and model."""
    from neuron_tasks.llm.cache import stats

    emit(stats(pool()), ["operation", "model", "entries", "bytes", "hits", "oldest_access", "newest_access",
                         "expired"], as_json=as_json, title="LLM result cache")


@cache_app.command("clear")
def cache_clear(operation: Annotated[str | None, typer.Option(help="Only embed, complete or rerank.")] = None,
                yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Delete cache entries (asks first on a terminal; needs --yes elsewhere)."""
    from neuron_tasks.llm.cache import clear, stats

    if operation is not None and operation not in CACHE_OPERATIONS:
        fail(f"unknown operation {operation!r}: use one of {', '.join(CACHE_OPERATIONS)}")
    if not yes:
        count = sum(int(r["entries"]) for r in stats(pool()) if operation is None or r["operation"] == operation)
        scope = f"{operation} " if operation else ""
        confirm_destructive(f"delete {count} {scope}cache entr{'y' if count == 1 else 'ies'}", yes=yes)
    n = clear(pool(), operation)
    print(json.dumps({"deleted": n})) if as_json else console.print(f"deleted {n} cache entries")


@cache_app.command("rotate")
def cache_rotate(as_json: JsonOpt = False) -> None:
    """Run cache rotation now (what the llm_cache_rotate job does): expire, then evict LRU."""
    from neuron_tasks.llm.cache import rotate
    from neuron_tasks.llm.settings import LlmSettings

    out = rotate(pool(), LlmSettings())
    print(json.dumps(out)) if as_json else console.print(
        f"expired {out['expired']}, evicted {out['evicted']} (LRU), purged {out['results_purged']} job results")


def _dicts(conn: psycopg.Connection[Any], name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of the named query, by column name."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(q(name), params).fetchall()


def demo_phase(url: str, settings: Any, console: Any) -> bool:
    """Embedding jobs (local model) and completions (a fake provider unless one is configured)."""
    from neuron_tasks.llm.demo import run

    return run(url, settings, console)
