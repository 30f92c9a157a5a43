"""Server-side SVG charts: no JavaScript, no network; every label escaped.

Every chart carries its title (shown, and as the SVG's <title>), its y axis' unit, an x axis
caption, and a legend naming each series in its colour, so a chart reads on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

#: The drawing's own size; the SVG scales to its box (CSS keeps it readable on a phone).
WIDTH, HEIGHT = 720, 250
PAD_L, PAD_R, PAD_T, PAD_B = 52, 14, 58, 36
SWATCH = 10
#: About how wide one character of a label is, in the drawing's units.
CHAR_PX = 7.5


def _fmt(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1_000_000:.1f}M"
    if v >= 10_000:
        return f"{v / 1000:.0f}k"
    if v != int(v):
        return f"{v:.3g}"
    return f"{int(v)}"


def _legend(series: Sequence[tuple[str, str]], width: int) -> tuple[list[str], int]:
    """The legend's swatches and names, in rows that fit the drawing; returns (svg, rows)."""
    out = ['<g class="legend">']
    x, row = 4.0, 0
    for name, cls in series:
        room = SWATCH + 16 + 7.5 * len(name)
        if x > 4 and x + room > width - PAD_R:
            x, row = 4.0, row + 1
        y = 22 + 16 * row
        out.append(f'<rect class="{escape(cls)} swatch" x="{x:.0f}" y="{y}" width="{SWATCH}" height="{SWATCH}"/>'
                   f'<text class="legend-label" x="{x + SWATCH + 4:.0f}" y="{y + 9}">{escape(name)}</text>')
        x += room
    out.append("</g>")
    return out, row + 1


def _frame(title: str, unit: str, x_label: str, top: float, series: Sequence[tuple[str, str]],
           width: int, height: int) -> tuple[list[str], int, int]:
    """The SVG's head: title, legend, axes, y ticks (0, half, top) with the unit, the x caption.
    Returns (svg, the plot's top, the drawing's height): a legend of several rows pushes the plot down."""
    legend, rows = _legend(series, width)
    pad_t = PAD_T + 16 * (rows - 1)
    height += pad_t - PAD_T
    plot_h = height - pad_t - PAD_B
    base = pad_t + plot_h
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" preserveAspectRatio="xMinYMin meet" '
             f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text class="chart-title" x="4" y="16">{escape(title)}</text>', *legend]
    parts.append(f'<line class="axis" x1="{PAD_L}" y1="{base}" x2="{width - PAD_R}" y2="{base}"/>'
                 f'<line class="axis" x1="{PAD_L}" y1="{pad_t}" x2="{PAD_L}" y2="{base}"/>')
    for frac in (0.0, 0.5, 1.0):
        y = base - plot_h * frac
        value = _fmt(round(top * frac, 3))
        if frac > 0:
            parts.append(f'<line class="grid" x1="{PAD_L}" y1="{y:.1f}" x2="{width - PAD_R}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    if unit:
        parts.append(f'<text class="unit" x="4" y="{pad_t - 10}">{escape(unit)}</text>')
    if x_label:
        parts.append(f'<text class="axis-label" x="{width - PAD_R}" y="{height - 6}" text-anchor="end">'
                     f"{escape(x_label)}</text>")
    return parts, pad_t, height


def _x_labels(labels: Sequence[str], xs: Sequence[float], width: int, height: int, every: int) -> list[str]:
    """Labels under the x axis: every `every`-th, each cut to the room it has (the full text stays
    in its tooltip), the first and last kept inside the drawing."""
    out = []
    room = (xs[1] - xs[0]) * every if len(xs) > 1 else float(width - PAD_L - PAD_R)
    fits = max(int(room / CHAR_PX) - 1, 3)
    for i in range(0, len(labels), every):
        text = labels[i] if len(labels[i]) <= fits else labels[i][:fits - 1] + "…"
        x = xs[i]
        half = CHAR_PX / 2 * len(text)
        anchor = "middle"
        if x - half < 2:
            anchor, x = "start", 2.0
        elif x + half > width - 2:
            anchor, x = "end", float(width - 2)
        tip = f"<title>{escape(labels[i])}</title>" if text != labels[i] else ""
        out.append(f'<text class="tick x" x="{x:.1f}" y="{height - PAD_B + 15}" text-anchor="{anchor}">'
                   f"{tip}{escape(text)}</text>")
    return out


def bars(series: Sequence[tuple[str, Sequence[float], str]], labels: Sequence[str], *, title: str,
         unit: str = "", x_label: str = "", y_max: float | None = None, width: int = WIDTH,
         height: int = HEIGHT) -> Markup:
    """Grouped vertical bars: one group per label, one bar per series (name, values, css class)."""
    top = max([max(v, default=0) for _, v, _ in series] + [y_max or 1])
    parts, pad_t, height = _frame(title, unit, x_label, top, [(name, cls) for name, _, cls in series], width, height)
    plot_w, plot_h = width - PAD_L - PAD_R, height - pad_t - PAD_B
    n = max(len(labels), 1)
    group = plot_w / n  # each label owns one slot; its bars sit centred in it, its label under their middle
    bar = min(group * 0.9 / max(len(series), 1), 48.0)
    inset = (group - bar * len(series)) / 2
    for i, label in enumerate(labels):
        for s, (name, values, cls) in enumerate(series):
            v = float(values[i] or 0) if i < len(values) else 0.0
            if v <= 0:
                continue
            h = plot_h * v / top
            x = PAD_L + i * group + inset + s * bar
            parts.append(f'<rect class="{escape(cls)}" x="{x:.1f}" y="{pad_t + plot_h - h:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}"><title>{escape(label)} {escape(name)}: {_fmt(v)}</title></rect>')
    step = max(n // 6, 1) if n > 12 else 1  # a few labels: every one; many (minutes): every step-th
    parts += _x_labels(labels, [PAD_L + (i + 0.5) * group for i in range(len(labels))], width, height, step)
    parts.append("</svg>")
    return Markup("".join(parts))


def lines(series: Sequence[tuple[str, Sequence[float | None], str]], labels: Sequence[str], *, title: str,
          unit: str = "", x_label: str = "", y_max: float | None = None, width: int = WIDTH,
          height: int = HEIGHT) -> Markup:
    """Line chart: one polyline per series (name, values, css class); gaps where a value is None.
    A series of one point is drawn as a dot."""
    vals = [float(v) for _, vs, _ in series for v in vs if v is not None]
    top = max([*vals, y_max or 1e-9])
    parts, pad_t, height = _frame(title, unit, x_label, top, [(name, cls) for name, _, cls in series], width, height)
    plot_w, plot_h = width - PAD_L - PAD_R, height - pad_t - PAD_B
    n = max(len(labels), 2)
    xs = [PAD_L + i * plot_w / (n - 1) for i in range(max(len(labels), 1))]
    for name, values, cls in series:
        pts = [(xs[i] if i < len(xs) else PAD_L + i * plot_w / (n - 1), pad_t + plot_h - plot_h * float(v) / top)
               for i, v in enumerate(values) if v is not None]
        if len(pts) == 1:
            parts.append(f'<circle class="{escape(cls)}" cx="{pts[0][0]:.1f}" cy="{pts[0][1]:.1f}" r="3">'
                         f"<title>{escape(name)}</title></circle>")
        elif pts:
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline class="{escape(cls)}" fill="none" points="{points}">'
                         f"<title>{escape(name)}</title></polyline>")
    step = max(len(labels) // 6, 1)
    parts += _x_labels(labels, xs, width, height, step)
    parts.append("</svg>")
    return Markup("".join(parts))
