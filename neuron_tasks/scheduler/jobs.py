"""Scheduled jobs: built-ins, user periodic actors (decorator or TOML config), their triggers.

    from neuron_tasks import periodic

    @periodic(every=1)                  # every second, on the epoch grid (all nodes agree)
    @dramatiq.actor
    def heartbeat() -> None: ...

    @periodic(cron="*/5 * * * *")       # 5 fields, or 6 with seconds first
    @dramatiq.actor(queue_name="reports")
    def report() -> None: ...

Ticks missed while no scheduler ran are not replayed: a job that missed some (within
scheduler_misfire_grace_s) fires once, late; `@periodic(..., catch_up=True)` replays each.

Config (`neuron-tasks scheduler --config jobs.toml`, or NEURON_TASKS_SCHEDULER_CONFIG):

    [[jobs]]
    name = "nightly"      # optional, defaults to the actor name
    actor = "rebuild_report"
    queue = "default"
    cron = "0 3 * * *"    # or: every = 30
    args = [1]
    kwargs = {}
    catch_up = false      # true: replay each missed tick (within the misfire grace)
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from neuron_tasks.errors import ConfigurationError

#: Interval triggers are anchored here so every node computes the same fire times.
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass
class ScheduledJob:
    name: str
    kind: str  # "actor": enqueued for workers; "builtin": a part's maintenance run by the leader
    target: str  # actor name, or the "module:function" of the builtin
    every: float | None = None
    cron: str | None = None
    queue: str = "default"
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    # Ticks missed while no scheduler led (or while a wake-up was late): False (the default) fires
    # them once, as one late run, as Celery beat and APScheduler's coalesce do; True replays each
    # one. Either way only ticks within scheduler_misfire_grace_s count.
    catch_up: bool = False
    requires: str | None = None  # a table that must exist, else the tick is recorded as skipped
    skip_unless: str | None = None  # a named query answering one boolean: false records the tick as skipped

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise ConfigurationError(f"scheduled job {self.name!r}: give exactly one of every= or cron=")
        if self.every is not None and self.every < 1:
            raise ConfigurationError(f"scheduled job {self.name!r}: every= must be at least 1 second")
        self.trigger()  # validate now

    @property
    def trigger_text(self) -> str:
        return f"every {self.every:g}s" if self.every is not None else f"cron {self.cron}"

    def trigger(self) -> Any:
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        if self.every is not None:
            return IntervalTrigger(seconds=self.every, start_date=EPOCH, timezone=UTC)
        fields = (self.cron or "").split()
        try:
            if len(fields) == 5:
                return CronTrigger.from_crontab(self.cron, timezone=UTC)
            if len(fields) == 6:
                second, minute, hour, day, month, dow = fields
                return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=dow,
                                   timezone=UTC)
        except ValueError as exc:
            raise ConfigurationError(f"scheduled job {self.name!r}: bad cron {self.cron!r}: {exc}") from None
        raise ConfigurationError(f"scheduled job {self.name!r}: cron needs 5 fields (or 6 with seconds first)")


def due_times(trigger: Any, last: datetime | None, now: datetime, *, grace_s: float, limit: int,
              since: datetime | None = None) -> tuple[list[datetime], datetime | None, int]:
    """Fire times in (last, now] to fire now, the next one after them, and how many were skipped
    as older than the grace. A job never fired starts at its first tick at or after `since`
    (when this node began to lead), else after now."""
    floor = now - timedelta(seconds=grace_s)
    skipped = 0
    if last is None:
        t = trigger.get_next_fire_time(None, max(since, floor) if since is not None else now)
    elif last < floor:
        t = trigger.get_next_fire_time(last, now)
        while t is not None and t < floor:
            skipped += 1
            t = trigger.get_next_fire_time(t, now)
            if skipped >= 10_000:  # long outage: stop counting, resume at the grace floor
                t = trigger.get_next_fire_time(None, floor)
                break
    else:
        t = trigger.get_next_fire_time(last, now)
    out: list[datetime] = []
    while t is not None and t <= now and len(out) < limit:
        out.append(t)
        t = trigger.get_next_fire_time(t, now)
    return out, t, skipped


# -- user declarations ----------------------------------------------------------------------
REGISTRY: dict[str, ScheduledJob] = {}


def register(job: ScheduledJob) -> ScheduledJob:
    REGISTRY[job.name] = job
    return job


def periodic(*, every: float | None = None, cron: str | None = None, name: str | None = None,
             args: list[Any] | None = None, kwargs: dict[str, Any] | None = None,
             catch_up: bool = False) -> Callable[[Any], Any]:
    """Declare a Dramatiq actor periodic: the scheduler's leader enqueues it at each tick.

    Ticks missed while no scheduler ran are not replayed: a job that missed some (within
    scheduler_misfire_grace_s) fires once, late; `catch_up=True` replays every one of them."""

    def deco(actor: Any) -> Any:
        actor_name = getattr(actor, "actor_name", None)
        if actor_name is None:
            raise ConfigurationError("@periodic goes above @dramatiq.actor (it needs the actor)")
        register(ScheduledJob(name or actor_name, "actor", actor_name, every=every, cron=cron,
                              queue=getattr(actor, "queue_name", "default"), args=list(args or []),
                              kwargs=dict(kwargs or {}), catch_up=catch_up))
        return actor

    return deco


def load_config(path: Path) -> list[ScheduledJob]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read scheduler config {path}: {exc}") from None
    if not isinstance(data.get("jobs"), list) or not data["jobs"]:
        raise ConfigurationError(f"{path}: no [[jobs]] entries; declare each job as a [[jobs]] table with "
                                 "actor = \"...\" and every = SECONDS or cron = \"...\"")
    jobs = []
    for entry in data["jobs"]:
        if "actor" not in entry:
            raise ConfigurationError(f"{path}: every [[jobs]] entry needs actor = \"...\"")
        jobs.append(ScheduledJob(entry.get("name", entry["actor"]), "actor", entry["actor"],
                                 every=entry.get("every"), cron=entry.get("cron"),
                                 queue=entry.get("queue", "default"), args=list(entry.get("args", [])),
                                 kwargs=dict(entry.get("kwargs", {})), options=dict(entry.get("options", {})),
                                 catch_up=_flag(path, entry, "catch_up")))
    return jobs


def _flag(path: Path, entry: dict[str, Any], key: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise ConfigurationError(f"{path}: {key} must be true or false, not {value!r}")
    return value


def part_jobs(settings: dict[str, Any] | None = None) -> list[ScheduledJob]:
    """Every part's ticks as scheduled jobs: statements the leader runs itself (kind "builtin",
    so they work with no worker alive) or actors enqueued for workers. A tick whose `every` names
    a setting reads it from `settings` when given there, else from that setting's part."""
    from neuron_tasks.core import parts

    values = dict(settings or {})
    jobs = []
    for part in parts.parts():
        for tick in part.ticks:
            every = float(tick.every if isinstance(tick.every, int | float) else _setting(tick.every, values))
            if tick.run is not None:
                jobs.append(ScheduledJob(tick.name, "builtin", tick.run, every=every, catch_up=False,
                                         requires=tick.requires, skip_unless=tick.skip_unless))
                continue
            actor = str(_setting(tick.actor_setting, values) or tick.actor) if tick.actor_setting else tick.actor
            jobs.append(ScheduledJob(tick.name, "actor", str(actor), every=every, queue=tick.queue, catch_up=False,
                                     requires=tick.requires, skip_unless=tick.skip_unless))
    return jobs


def _setting(key: str, values: dict[str, Any]) -> Any:
    if key in values:
        return values[key]
    from neuron_tasks.core import runtime

    d = runtime.definitions().get(key)
    if d is None:
        raise ConfigurationError(f"a periodic job reads the setting {key!r}, which no part declares")
    return getattr(d.owner(), key)
