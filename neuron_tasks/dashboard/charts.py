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


def _fmt(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1_000_000:.1f}M"
    if v >= 10_000:
        return f"{v / 1000:.0f}k"
    if v != int(v):
        return f"{v:.3g}"
    return f"{int(v)}"


def _frame(title: str, unit: str, x_label: str, top: float, series: Sequence[tuple[str, str]],
           width: int, height: int) -> list[str]:
    """The SVG's head: title, legend, axes, y ticks (0, half, top) with the unit, the x caption."""
    plot_h = height - PAD_T - PAD_B
    base = PAD_T + plot_h
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" preserveAspectRatio="xMinYMin meet" '
             f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text class="chart-title" x="{PAD_L}" y="16">{escape(title)}</text>']
    legend = ['<g class="legend">']
    x = float(PAD_L)
    for name, cls in series:
        legend.append(f'<rect class="{escape(cls)} swatch" x="{x:.0f}" y="22" width="{SWATCH}" height="{SWATCH}"/>'
                      f'<text class="legend-label" x="{x + SWATCH + 4:.0f}" y="31">{escape(name)}</text>')
        x += SWATCH + 16 + 7.5 * len(name)
    legend.append("</g>")
    parts += legend
    parts.append(f'<line class="axis" x1="{PAD_L}" y1="{base}" x2="{width - PAD_R}" y2="{base}"/>'
                 f'<line class="axis" x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{base}"/>')
    for frac in (0.0, 0.5, 1.0):
        y = base - plot_h * frac
        value = _fmt(round(top * frac, 3))
        if frac > 0:
            parts.append(f'<line class="grid" x1="{PAD_L}" y1="{y:.1f}" x2="{width - PAD_R}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    if unit:
        parts.append(f'<text class="unit" x="4" y="{PAD_T - 10}">{escape(unit)}</text>')
    if x_label:
        parts.append(f'<text class="axis-label" x="{width - PAD_R}" y="{height - 6}" text-anchor="end">'
                     f"{escape(x_label)}</text>")
    return parts


def _x_labels(labels: Sequence[str], xs: Sequence[float], width: int, height: int, every: int) -> list[str]:
    """Labels under the x axis: every `every`-th, the first anchored at its start and the last at
    its end when they would otherwise stick out of the drawing."""
    out = []
    chosen = list(range(0, len(labels), every))
    for i in chosen:
        x = xs[i]
        half = 3.3 * len(labels[i])
        anchor = "middle"
        if x - half < PAD_L - 40:
            anchor, x = "start", max(x - half, 2.0)
        elif x + half > width - 2:
            anchor, x = "end", float(width - 2)
        out.append(f'<text class="tick x" x="{x:.1f}" y="{height - PAD_B + 14}" text-anchor="{anchor}">'
                   f"{escape(labels[i])}</text>")
    return out


def bars(series: Sequence[tuple[str, Sequence[float], str]], labels: Sequence[str], *, title: str,
         unit: str = "", x_label: str = "", width: int = WIDTH, height: int = HEIGHT) -> Markup:
    """Grouped vertical bars: one group per label, one bar per series (name, values, css class)."""
    plot_w, plot_h = width - PAD_L - PAD_R, height - PAD_T - PAD_B
    top = max([max(v, default=0) for _, v, _ in series] + [1])
    n = max(len(labels), 1)
    group = plot_w / n  # each label owns one slot; its bars sit centred in it, its label under their middle
    bar = min(group * 0.9 / max(len(series), 1), 48.0)
    inset = (group - bar * len(series)) / 2
    parts = _frame(title, unit, x_label, top, [(name, cls) for name, _, cls in series], width, height)
    for i, label in enumerate(labels):
        for s, (name, values, cls) in enumerate(series):
            v = float(values[i]) if i < len(values) else 0.0
            if v <= 0:
                continue
            h = plot_h * v / top
            x = PAD_L + i * group + inset + s * bar
            parts.append(f'<rect class="{escape(cls)}" x="{x:.1f}" y="{PAD_T + plot_h - h:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}"><title>{escape(label)} {escape(name)}: {_fmt(v)}</title></rect>')
    step = max(n // 6, 1) if n > 12 else 1  # a few labels: every one; many (minutes): every step-th
    parts += _x_labels(labels, [PAD_L + (i + 0.5) * group for i in range(len(labels))], width, height, step)
    parts.append("</svg>")
    return Markup("".join(parts))


def lines(series: Sequence[tuple[str, Sequence[float | None], str]], labels: Sequence[str], *, title: str,
          unit: str = "", x_label: str = "", width: int = WIDTH, height: int = HEIGHT) -> Markup:
    """Line chart: one polyline per series (name, values, css class); gaps where a value is None.
    A series of one point is drawn as a dot."""
    plot_w, plot_h = width - PAD_L - PAD_R, height - PAD_T - PAD_B
    vals = [float(v) for _, vs, _ in series for v in vs if v is not None]
    top = max([*vals, 1e-9])
    n = max(len(labels), 2)
    xs = [PAD_L + i * plot_w / (n - 1) for i in range(max(len(labels), 1))]
    parts = _frame(title, unit, x_label, top, [(name, cls) for name, _, cls in series], width, height)
    for name, values, cls in series:
        pts = [(xs[i] if i < len(xs) else PAD_L + i * plot_w / (n - 1), PAD_T + plot_h - plot_h * float(v) / top)
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
