"""Templates and the filters that make any value safe to show (escaped by Jinja, cut to size)."""

from __future__ import annotations

import importlib.util
import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape
from starlette.templating import Jinja2Templates

from neuron_tasks.core import parts

HERE = Path(__file__).parent
#: Longest text shown in a table cell, and in a block (args, traceback).
CELL_CHARS = 200
BLOCK_CHARS = 20_000


def cut(value: Any, limit: int = CELL_CHARS) -> str:
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return text[:limit] + f"… ({len(text) - limit:,} more characters)"


def cell(value: Any, limit: int = CELL_CHARS) -> str:
    """Any database value as short text (Jinja escapes it)."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, timedelta):
        return age(value.total_seconds())
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, bytes | memoryview):
        raw = bytes(value)  # a key or digest: its first bytes in hex identify it
        return raw[:8].hex() + ("…" if len(raw) > 8 else "")
    if isinstance(value, dict | list | tuple):
        return cut(json.dumps(value, ensure_ascii=False, default=str), limit)
    return cut(value, limit)


_HYPHENATED = re.compile(r"\S*-\S*")


def words(value: Any) -> Markup:
    """Text for a table cell, escaped, whose hyphenated words ("photo-12.jpg", "node-1", dates) are
    kept whole: a cell then wraps between words only, never at a word's hyphen."""
    text = str(escape(value))  # entities hold no space, so a word is wrapped whole
    return Markup(_HYPHENATED.sub(lambda m: f'<span class="nw">{m.group(0)}</span>', text))


def pretty(value: Any, limit: int = BLOCK_CHARS) -> str:
    """JSON, indented, cut to size."""
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = str(value)
    # A lone surrogate (possible in decoded JSON) cannot be sent as UTF-8: show it as "?".
    return cut(text.encode("utf-8", "replace").decode("utf-8"), limit)


def age(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60)}s"
    if s < 86400:
        return f"{int(s // 3600)}h {int(s % 3600 // 60)}m"
    return f"{int(s // 86400)}d {int(s % 86400 // 3600)}h"


def epoch(value: Any) -> str:
    try:
        return datetime.fromtimestamp(float(value)).astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (TypeError, ValueError, OverflowError, OSError):
        return cell(value)


def package_dir(package: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{package} is not a package: it cannot hold a page template")
    return str(spec.submodule_search_locations[0])


def templates() -> Jinja2Templates:
    """The dashboard's templates; a part's own ("package:file.html", see Page.template) by that name."""
    packages = sorted({page.template.partition(":")[0] for _, page in parts.pages().values() if page.template})
    part_templates = jinja2.PrefixLoader({pkg: jinja2.FileSystemLoader(package_dir(pkg)) for pkg in packages},
                                         delimiter=":")
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(HERE / "templates")), part_templates]),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(cell=cell, cut=cut, pretty=pretty, age=age, epoch=epoch, words=words)
    return Jinja2Templates(env=env)
