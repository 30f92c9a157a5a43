"""Settings that change at runtime: definitions from the pydantic classes, values in Postgres.

Precedence, lowest first: built-in default < config file < environment < runtime setting.
`sync_defs` publishes every settings field (type, bounds, choices, unit, whether it can change
live) to neuron_tasks.setting_defs, so `neuron_tasks.set_setting()` in SQL validates exactly
what Python declares; `effective()` builds a settings object with the runtime values on top.
"""

from __future__ import annotations

import builtins
import os
import threading
import time
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Any, SupportsFloat

import annotated_types
import psycopg
from psycopg.rows import class_row, scalar_row
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from neuron_tasks.config import RESTART_REQUIRED, Settings, config_file
from neuron_tasks.core import parts
from neuron_tasks.errors import ConfigurationError
from neuron_tasks.sql import q

_SECRET_WORDS = ("api_key", "password", "secret")


M = typing.TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class SettingDef:
    key: str
    type: str
    nullable: bool
    minimum: float | None
    exclusive_minimum: bool
    maximum: float | None
    exclusive_maximum: bool
    choices: list[str] | None
    pattern: str | None
    live: bool
    unit: str
    default: Any
    description: str
    secret: bool
    owner: builtins.type[BaseSettings]  # the class that validates it (`type` is the field above)


@dataclass(frozen=True, slots=True)
class RuntimeValue:
    """A row of neuron_tasks.settings."""

    key: str
    value: str | None


@dataclass(frozen=True, slots=True)
class SettingsVersion:
    """How many runtime settings are set and when the last one changed: equal versions, same values."""

    entries: int
    updated_at: datetime | None


def settings_classes() -> list[type[BaseSettings]]:
    """The settings classes every part declares (core's first)."""
    return parts.settings_classes()


def restart_required(field: FieldInfo) -> bool:
    """A field declared with `restart_only(...)`: read once at start."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(RESTART_REQUIRED))


def _bound(value: object) -> float:
    """A numeric bound of a field (ge, gt, le, lt) as a float."""
    if not isinstance(value, SupportsFloat):
        raise TypeError(f"setting bound {value!r} is not a number")
    return float(value)


def _unit(key: str) -> str:
    for suffix, unit in (("_ms", "ms"), ("_s", "s"), ("_mb", "MB"), ("_bytes", "bytes")):
        if key.endswith(suffix):
            return unit
    return ""


def definitions() -> dict[str, SettingDef]:
    """Every setting of every installed part, by key (first class wins for shared keys)."""
    defs: dict[str, SettingDef] = {}
    for cls in settings_classes():
        for key, field in cls.model_fields.items():
            if key in defs:
                continue
            ann = field.annotation
            args = typing.get_args(ann)
            nullable = type(None) in args
            base = next((a for a in args if a is not type(None)), ann) if args and nullable else ann
            choices = None
            if typing.get_origin(base) is typing.Literal:
                choices = [str(c) for c in typing.get_args(base)]
                kind = "string"
            elif base is bool:
                kind = "boolean"
            elif base is int:
                kind = "integer"
            elif base is float:
                kind = "number"
            else:
                kind = "string"
            lo = hi = None
            lo_ex = hi_ex = False
            pattern = None
            for meta in field.metadata:
                if isinstance(meta, annotated_types.Ge):
                    lo = _bound(meta.ge)
                elif isinstance(meta, annotated_types.Gt):
                    lo, lo_ex = _bound(meta.gt), True
                elif isinstance(meta, annotated_types.Le):
                    hi = _bound(meta.le)
                elif isinstance(meta, annotated_types.Lt):
                    hi, hi_ex = _bound(meta.lt), True
                elif getattr(meta, "pattern", None):
                    pattern = str(meta.pattern)
            secret = base is SecretStr or key.endswith("_token") or any(w in key for w in _SECRET_WORDS)
            complex_type = kind == "string" and base not in (str,) and choices is None
            live = not restart_required(field) and not secret and not complex_type
            defs[key] = SettingDef(key, kind, nullable, lo, lo_ex, hi, hi_ex, choices, pattern, live, _unit(key),
                                   field.default, field.description or "", secret, cls)
    return defs


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, SecretStr):
        return "********"
    return str(value)


def sync_defs(conn: psycopg.Connection[Any]) -> int:
    """Publish the definitions to neuron_tasks.setting_defs (called by `db upgrade`)."""
    defs = definitions()
    rows = [
        {"key": d.key, "type": d.type, "nullable": d.nullable, "minimum": d.minimum,
         "exclusive_minimum": d.exclusive_minimum, "maximum": d.maximum, "exclusive_maximum": d.exclusive_maximum,
         "choices": d.choices, "pattern": d.pattern, "live": d.live, "unit": d.unit,
         "default_value": None if d.secret else _text(d.default), "description": d.description}
        for d in defs.values()
    ]
    with conn.cursor() as cur:
        cur.executemany(q("setting_def_upsert"), rows)
        cur.execute(q("setting_defs_prune"), {"keys": list(defs)})
    return len(rows)


def settings_table_missing(conn: psycopg.Connection[Any]) -> bool:
    """Whether this database has no runtime settings table yet (not upgraded)."""
    with conn.cursor(row_factory=scalar_row) as cur:
        return bool(cur.execute(q("settings_table_missing")).fetchone())


def runtime_values(conn: psycopg.Connection[Any]) -> dict[str, str | None]:
    """{key: value} of every runtime setting stored in this database."""
    with conn.cursor(row_factory=class_row(RuntimeValue)) as cur:
        return {r.key: r.value for r in cur.execute(q("runtime_values"))}


def version(conn: psycopg.Connection[Any]) -> SettingsVersion:
    """Changes whenever a runtime setting is set or reset (polling fallback of NOTIFY)."""
    with conn.cursor(row_factory=class_row(SettingsVersion)) as cur:
        found = cur.execute(q("settings_version")).fetchone()
    return found if found is not None else SettingsVersion(0, None)


def effective(base: M, runtime: dict[str, str | None]) -> M:
    """`base` (defaults, file, environment) with the runtime values of its fields on top."""
    fields = type(base).model_fields
    update = {k: v for k, v in runtime.items() if k in fields}
    if not update:
        return base
    merged = {**base.model_dump(), **update}
    try:
        return type(base).model_validate(merged)
    except ValidationError as exc:
        raise ConfigurationError(f"runtime settings are invalid for {type(base).__name__}: {exc}") from exc


def set_value(conn: psycopg.Connection[Any], key: str, value: str | None) -> str | None:
    """Validate with the owning pydantic class, then store through neuron_tasks.set_setting()."""
    defs = definitions()
    d = defs.get(key)
    if d is None:
        near = sorted(k for k in defs if key.split("_")[0] in k)[:8]
        hint = f"; did you mean one of {', '.join(near)}?" if near else "; see `neuron-tasks config show`"
        raise ConfigurationError(f"unknown setting {key!r}{hint}")
    if not d.live:
        raise ConfigurationError(
            f"setting {key} cannot change while processes run: set NEURON_TASKS_{key.upper()} in the environment "
            "or the config file and restart"
        )
    if value is not None and value.lower() not in ("null", "none", ""):
        try:
            d.owner.model_validate({**_defaults(d.owner), key: value})
        except ValidationError as exc:
            errors = "; ".join(e["msg"] for e in exc.errors() if e["loc"] and e["loc"][0] == key)
            raise ConfigurationError(f"invalid value {value!r} for {key}: {errors or exc}") from None
    try:
        with conn.cursor(row_factory=scalar_row) as cur:
            stored = cur.execute(q("set_setting"), {"key": key, "value": value}).fetchone()
    except psycopg.Error as exc:
        raise ConfigurationError(str(exc.diag.message_primary or exc)) from None
    forget_values()  # this process's producers see the new value at once
    return None if stored is None else str(stored)


def reset_value(conn: psycopg.Connection[Any], key: str) -> bool:
    with conn.cursor(row_factory=scalar_row) as cur:
        found = bool(cur.execute(q("reset_setting"), {"key": key}).fetchone())
    forget_values()
    return found


def _defaults(cls: builtins.type[BaseSettings]) -> dict[str, Any]:
    return {k: f.default for k, f in cls.model_fields.items() if f.is_required() is False}


def show(conn: psycopg.Connection[Any] | None) -> list[dict[str, Any]]:
    """Every setting: effective value, unit, source (default, file, env, runtime), description."""
    runtime = runtime_values(conn) if conn is not None else {}
    path = config_file()
    file_values: dict[str, Any] = {}
    if path is not None and path.is_file():
        import tomllib

        data = tomllib.loads(path.read_text())
        file_values = {**{k: v for k, v in data.items() if not isinstance(v, dict)}, **data.get("neuron_tasks", {})}
    rows = []
    for d in definitions().values():
        env_name = f"NEURON_TASKS_{d.key.upper()}"
        if d.key in runtime:
            value, source = runtime[d.key], "runtime"
        elif env_name in os.environ:
            value, source = os.environ[env_name], "env"
        elif d.key in file_values:
            value, source = file_values[d.key], "file"
        else:
            value, source = d.default, "default"
        if d.secret and value is not None:
            value = "********"
        elif value and isinstance(value, str) and (d.key == "database_url" or "://" in value):
            from neuron_tasks.db import redact  # URLs may carry a password: user:password@host

            value = redact(value)
        rows.append({"key": d.key, "value": _text(value), "unit": d.unit, "source": source, "live": d.live,
                     "description": d.description})
    return rows


def live_settings(url: str, base: Settings | None = None) -> Settings:
    """The core Settings with this database's runtime values applied."""
    with psycopg.connect(url, autocommit=True) as conn:
        return effective(base or Settings(), runtime_values(conn))


_cache: dict[str, tuple[float, dict[str, str | None]]] = {}
_cache_lock = threading.Lock()


def values_for(url: str, *, max_age_s: float = 2.0) -> dict[str, str | None]:
    """This database's runtime values, re-read at most every `max_age_s` (kept on errors, and not
    asked for again before `max_age_s` either, so a database that is down costs one try per period).

    The same dict is returned until the values are read again: callers may cache what they derive
    from it by identity (PostgresBroker.enqueue_settings does)."""
    with _cache_lock:
        cached = _cache.get(url)
        if cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            values = {} if settings_table_missing(conn) else runtime_values(conn)
    except psycopg.Error:
        values = cached[1] if cached is not None else {}
    with _cache_lock:
        known = _cache.get(url)
        if known is not None and known[1] == values:
            values = known[1]  # unchanged: keep the same object
        _cache[url] = (time.monotonic(), values)
    return values


def forget_values(url: str | None = None) -> None:
    """Drop the cached runtime values of one database (None: of all), so the next `values_for`
    reads them again (after `config set` in this process, and in tests)."""
    with _cache_lock:
        if url is None:
            _cache.clear()
        else:
            _cache.pop(url, None)


def overlay(base: M, url: str) -> M:
    """`base` (as built at start: defaults < file < environment < arguments) with the runtime
    values on top. Long-running parts (tuner, scheduler) call this on every cycle."""
    return effective(base, values_for(url))
