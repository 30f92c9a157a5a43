"""Middleware hooks looked up once per middleware list, not on every signal.

Dramatiq's broker emits a signal by calling `getattr(middleware, "before_" + signal)` on every
middleware, every time; most of those are the base class's empty methods. `Hooks` keeps, per
signal, the bound methods that do something, in the order Dramatiq calls them, and builds them
again whenever the list of middleware changes (any addition, removal or replacement).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dramatiq.middleware import Middleware

#: A middleware and its hook for one signal; None when it has no such attribute (calling it then
#: raises AttributeError, which the broker logs as Dramatiq does).
Hook = tuple[Middleware, Callable[..., Any] | None]


def _does_something(hook: Any, name: str) -> bool:
    """False for the base class's empty hook, True for anything else (overrides, instance attributes)."""
    return getattr(hook, "__func__", None) is not getattr(Middleware, name, None)


class Hooks:
    """Per signal name ("before_ack", "after_process_message", ...), the hooks to call."""

    def __init__(self) -> None:
        self._key: tuple[int, ...] = ()
        self._by_name: dict[str, tuple[Hook, ...]] = {}

    def of(self, middleware: Sequence[Middleware], name: str, *, reverse: bool) -> tuple[Hook, ...]:
        key = tuple(map(id, middleware))  # the bound methods kept below keep these objects alive
        if key != self._key:
            self._key, self._by_name = key, {}
        hooks = self._by_name.get(name)
        if hooks is None:
            order = reversed(middleware) if reverse else middleware
            found: list[Hook] = []
            for m in order:
                hook = getattr(m, name, None)
                if hook is None:
                    found.append((m, None))
                elif _does_something(hook, name):
                    found.append((m, hook))
            hooks = self._by_name[name] = tuple(found)
        return hooks
