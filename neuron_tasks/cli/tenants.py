"""`neuron-tasks tenants`: per-tenant QPS and token budgets."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from neuron_tasks.commandline import JsonOpt, YesOpt, confirm_destructive, console, done, emit, fail, jsonable, pool
from neuron_tasks.errors import InvalidOption

NAME = "tenants"
app = typer.Typer(help="Tenants: QPS limits and token budgets shared by every worker.", no_args_is_help=True)

COLUMNS = ["name", "qps", "burst", "tokens_per_minute", "tokens_per_day", "tokens_this_minute", "tokens_today",
           "throttled", "pending", "running", "failed", "finished"]


@app.command("set")
def set_(
    name: Annotated[str, typer.Argument(help="Tenant name (the `tenant` message option).")],
    qps: Annotated[float | None, typer.Option("--qps", help="Jobs started per second (token bucket).")] = None,
    burst: Annotated[float | None, typer.Option("--burst", help="Bucket size; default max(1, qps).")] = None,
    tokens_per_minute: Annotated[int | None, typer.Option(
        "--tokens-per-minute", help="Token budget per minute.")] = None,
    tokens_per_day: Annotated[int | None, typer.Option("--tokens-per-day", help="Token budget per day.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create or change a tenant. Options left out mean unlimited."""
    from neuron_tasks.core.tenancy import set_tenant, tenants

    p = pool()
    try:
        set_tenant(p, name, qps=qps, burst=burst, tokens_per_minute=tokens_per_minute, tokens_per_day=tokens_per_day)
    except InvalidOption as exc:
        fail(str(exc))
    [row] = tenants(p, name)
    if as_json:
        print(json.dumps(jsonable(row)))
    else:
        console.print(f"tenant {name}: qps={row['qps']} burst={row['burst']} "
                      f"tokens/min={row['tokens_per_minute']} tokens/day={row['tokens_per_day']}")


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Every tenant with its limits and current usage."""
    from neuron_tasks.core.tenancy import tenants

    emit(tenants(pool()), COLUMNS, as_json=as_json, title="Tenants")


@app.command("show")
def show(name: str, as_json: JsonOpt = False) -> None:
    """One tenant: limits, tokens used this minute and today, throttles, messages."""
    from neuron_tasks.core.tenancy import tenants

    rows = tenants(pool(), name)
    if not rows:
        fail(f"no tenant {name!r}; create it with `neuron-tasks tenants set {name} --qps N`")
    if as_json:
        print(json.dumps(jsonable(rows[0])))
        return
    for key, value in rows[0].items():
        console.print(f"[bold]{key}[/]: {'-' if value is None else value}", highlight=False)


@app.command("delete")
def delete(name: str, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Remove a tenant (its messages then follow the default tenant policy)."""
    from neuron_tasks.core.tenancy import delete_tenant, tenants

    p = pool()
    if not tenants(p, name):
        fail(f"no tenant {name!r}")
    confirm_destructive(f"delete tenant {name} with its limits and token budgets", yes=yes)
    if not delete_tenant(p, name):
        fail(f"no tenant {name!r}")
    done(as_json, {"deleted": "tenant", "name": name}, f"deleted tenant {name}")
