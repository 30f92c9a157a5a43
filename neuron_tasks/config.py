"""Settings: built-in defaults, a TOML config file and environment variables NEURON_TASKS_*.

One `Settings` object is built at the edge (CLI, worker boot, tests) and passed down;
nothing reads the environment at import time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "NEURON_TASKS_CONFIG"
#: What a send survives (see docs/semantics.md): on disk, committed, or handed to the process's sender.
Durability = Literal["durable", "balanced", "volatile"]
DURABILITY_LEVELS: tuple[Durability, ...] = ("durable", "balanced", "volatile")
#: Queue names (as neuron_tasks.core.options.QUEUE_NAME).
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")
#: The key, in a field's json_schema_extra, that marks a setting read once at start.
RESTART_REQUIRED = "restart_required"


def restart_only(**kwargs: Any) -> Any:
    """`Field(...)` of a setting read once at start: `config set` refuses it; change it in the
    environment or the config file and restart."""
    return Field(json_schema_extra={RESTART_REQUIRED: True}, **kwargs)


def config_file() -> Path | None:
    """The TOML config file: $NEURON_TASKS_CONFIG, else ./neuron_tasks.toml when it exists."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        return Path(named)
    local = Path("neuron_tasks.toml")
    return local if local.is_file() else None


class NeuronSettings(BaseSettings):
    """Base of every neuron_tasks settings class. Precedence, lowest first: built-in default <
    config file (TOML, keys as field names, top level or under [neuron_tasks]) < environment
    (NEURON_TASKS_<NAME>) < runtime setting (`neuron-tasks config set`, see runtime.py)."""

    model_config = SettingsConfigDict(env_prefix="NEURON_TASKS_", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = config_file()
        if path is None:
            return (init_settings, env_settings)
        toml = TomlConfigSettingsSource(settings_cls, toml_file=path)
        if not _has_table(path, "neuron_tasks"):
            return (init_settings, env_settings, toml)
        nested = TomlConfigSettingsSource(settings_cls, toml_file=path, toml_table_header=("neuron_tasks",))
        return (init_settings, env_settings, nested, toml)


def _has_table(path: Path, name: str) -> bool:
    """Whether the TOML file has a [name] table (a file that cannot be read has none: pydantic's
    own source reports it)."""
    import tomllib

    try:
        return isinstance(tomllib.loads(path.read_text()).get(name), dict)
    except (OSError, tomllib.TOMLDecodeError):
        return False


class Settings(NeuronSettings):
    """The queue's settings: each field's default and description say what it controls.

    Polling (naptime_ms), claiming (batch_size), back pressure (queue_depth), the per-job time
    limit (timeout_ms) and retries (max_retries, min_backoff_ms, max_backoff_ms) come first, then
    leases, retention, connections and tenant and topic policies. See docs/configuration.md for
    where the settings come from.
    """

    database_url: str | None = restart_only(
        default=None, description="PostgreSQL URL; unset = start an embedded PostgreSQL"
    )
    embedded_dir: Path | None = restart_only(
        default=None, description="data folder of the embedded PostgreSQL (default: per-user, under /var/tmp)"
    )
    session_url: str | None = restart_only(
        default=None, description="PostgreSQL itself, when database_url is a pooler in transaction mode (PgBouncer): "
        "LISTEN and session advisory locks use it; unset = database_url"
    )
    read_url: str | None = restart_only(
        default=None, description="a replica's PostgreSQL URL for reads that tolerate lag (dashboard pages, "
        "status, metrics scrapes, vector searches); unset = everything reads the primary"
    )
    naptime_ms: int = Field(default=1000, ge=10, le=600_000, description="fallback poll when no NOTIFY arrives")
    batch_size: int = Field(default=100, ge=1, le=10_000, description="messages a worker process prefetches")
    queue_depth: int = Field(default=10_000, ge=1, description="waiting messages a queue may hold")
    timeout_ms: int = Field(default=30_000, ge=1, description="per-job time limit")
    max_retries: int = Field(default=3, ge=0, description="retries before a message is dead-lettered")
    min_backoff_ms: int = Field(default=1000, ge=1, description="first retry delay (doubles, with jitter)")
    max_backoff_ms: int = Field(default=3_600_000, ge=1, description="longest retry delay")
    lease_s: float = Field(default=30.0, gt=0.2, description="how long a claimed message stays with a silent worker")
    ack_linger_ms: float = Field(
        default=2.0, ge=0, le=1000,
        description="no longer used (results are written at once, grouped while a write is in flight); kept so "
        "existing configuration still loads",
    )
    max_message_bytes: int = Field(default=1_048_576, ge=256, description="largest encoded message accepted")
    history_retention_s: int = Field(default=7 * 86400, ge=0, description="keep finished-message history this long")
    dead_letter_retention_s: int = Field(default=30 * 86400, ge=0, description="keep dead letters this long")
    pool_max_size: int = restart_only(default=16, ge=2, description="connections per process")
    shutdown_timeout_s: float = restart_only(default=30.0, ge=0, description="SIGTERM: time running jobs get to finish")

    tenant_policy: Literal["default", "refuse"] = Field(
        default="default",
        description="messages for a tenant not in the tenants table: run under the default limits, or refuse",
    )
    default_tenant_qps: float | None = Field(default=None, gt=0, description="QPS of tenants not configured")
    default_tenant_burst: float | None = Field(default=None, ge=1, description="burst of tenants not configured")
    default_tenant_tokens_per_minute: int | None = Field(default=None, gt=0, description="token budget per minute")
    default_tenant_tokens_per_day: int | None = Field(default=None, gt=0, description="token budget per day")
    policy_cache_s: float = Field(default=2.0, ge=0, description="how long tenant and topic settings are cached")
    topic_retry_ms: int = Field(default=50, ge=1, description="when a message that could not start is tried again")
    settings_poll_s: float = restart_only(
        default=5.0, gt=0, description="workers re-read runtime settings this often (and on NOTIFY)"
    )
    statement_timeout_ms: int = restart_only(
        default=60_000, ge=0, description="statement_timeout of our connections (0 = none)"
    )
    idle_in_transaction_timeout_ms: int = restart_only(
        default=60_000, ge=0, description="idle_in_transaction_session_timeout of our connections (0 = none)"
    )
    hard_timeout_grace_s: float = Field(
        default=10.0, ge=0,
        description="`neuron-tasks worker`: a job still running this long after its time limit (stuck in C "
        "code, where the limit cannot interrupt it) is ended by replacing its worker process; it counts a death",
    )
    enqueue_timeout_s: float = Field(
        default=5.0, gt=0, le=3600,
        description="how long send() and enqueue_many() wait for PostgreSQL before raising DatabaseUnavailable",
    )
    durability: Durability = restart_only(
        default="durable",
        description="what a send() survives, for queues not in queue_durability: durable (returns once the "
        "message is on disk), balanced (returns once committed; a server crash may lose the last fraction of a "
        "second of sends) or volatile (returns at once; written in the background, so a process that dies "
        "abruptly loses what it had not written yet); see docs/semantics.md",
    )
    queue_durability: dict[str, Durability] = restart_only(
        default_factory=dict,
        description='durability per queue, e.g. {"clicks": "volatile"} (environment: JSON); other queues use '
        "durability",
    )
    ack_wait: bool = Field(
        default=True,
        description="a worker thread waits until its message's result is written before taking another (a "
        "killed worker re-runs at most the jobs that were running); off: about twice the throughput for jobs of "
        "a millisecond or less, and a killed worker may also re-run finished jobs whose results were not yet "
        "written (up to batch_size)",
    )

    @field_validator("queue_durability")
    @classmethod
    def _queue_names(cls, value: dict[str, Durability]) -> dict[str, Durability]:
        bad = [name for name in value if not QUEUE_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"queue_durability: {bad[0]!r} is not a queue name (1-200 letters, digits, dot, "
                             "dash or underscore)")
        return value

    def durability_of(self, queue_name: str) -> Durability:
        """The durability level of a queue's sends."""
        return self.queue_durability.get(queue_name, self.durability)

    @property
    def heartbeat_s(self) -> float:
        """Leases are renewed three times per lease period."""
        return max(self.lease_s / 3.0, 0.05)
