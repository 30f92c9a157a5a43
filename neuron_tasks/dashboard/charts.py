"""Server-side SVG charts: no JavaScript, no network; every label escaped."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape


def _fmt(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1_000_000:.1f}M"
    if v >= 10_000:
        return f"{v / 1000:.0f}k"
    return f"{v:g}" if v != int(v) else f"{int(v)}"


def bars(series: Sequence[tuple[str, Sequence[float], str]], labels: Sequence[str], *, title: str,
         width: int = 1200, height: int = 170) -> Markup:
    """Grouped vertical bars: one group per label, one bar per series (name, values, css class)."""
    pad_l, pad_b, pad_t = 44, 20, 8
    plot_w, plot_h = width - pad_l - 6, height - pad_b - pad_t
    top = max([max(v, default=0) for _, v, _ in series] + [1])
    n = max(len(labels), 1)
    group = plot_w / n  # each label owns one slot; its bars sit centred in it, its label under their middle
    bar = min(group * 0.9 / max(len(series), 1), 48.0)
    inset = (group - bar * len(series)) / 2
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
             f'<line class="axis" x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width}" y2="{pad_t + plot_h}"/>',
             f'<text class="tick" x="{pad_l - 4}" y="{pad_t + 8}" text-anchor="end">{_fmt(top)}</text>',
             f'<text class="tick" x="{pad_l - 4}" y="{pad_t + plot_h}" text-anchor="end">0</text>']
    for i, label in enumerate(labels):
        for s, (name, values, cls) in enumerate(series):
            v = float(values[i]) if i < len(values) else 0.0
            if v <= 0:
                continue
            h = plot_h * v / top
            x = pad_l + i * group + inset + s * bar
            parts.append(f'<rect class="{escape(cls)}" x="{x:.1f}" y="{pad_t + plot_h - h:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}"><title>{escape(label)} {escape(name)}: {_fmt(v)}</title></rect>')
    step = max(n // 6, 1) if n > 12 else 1  # a few labels: every one; many (minutes): every step-th
    for i in range(0, len(labels), step):
        parts.append(f'<text class="tick" x="{pad_l + (i + 0.5) * group:.1f}" y="{height - 4}" '
                     f'text-anchor="middle">{escape(labels[i])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def lines(series: Sequence[tuple[str, Sequence[float | None], str]], labels: Sequence[str], *, title: str,
          width: int = 1200, height: int = 170) -> Markup:
    """Line chart: one polyline per series (name, values, css class); gaps where a value is None."""
    pad_l, pad_b, pad_t = 44, 20, 8
    plot_w, plot_h = width - pad_l - 6, height - pad_b - pad_t
    vals = [float(v) for _, vs, _ in series for v in vs if v is not None]
    top = max([*vals, 1e-9])
    n = max(len(labels), 2)
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
             f'<line class="axis" x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width}" y2="{pad_t + plot_h}"/>',
             f'<text class="tick" x="{pad_l - 4}" y="{pad_t + 8}" text-anchor="end">{_fmt(round(top, 3))}</text>']
    for name, values, cls in series:
        pts = [f"{pad_l + i * plot_w / (n - 1):.1f},{pad_t + plot_h - plot_h * float(v) / top:.1f}"
               for i, v in enumerate(values) if v is not None]
        if pts:
            parts.append(f'<polyline class="{escape(cls)}" fill="none" points="{" ".join(pts)}">'
                         f"<title>{escape(name)}</title></polyline>")
    step = max(len(labels) // 6, 1)
    for i in range(0, len(labels), step):
        parts.append(f'<text class="tick" x="{pad_l + i * plot_w / (n - 1):.1f}" y="{height - 4}">'
                     f"{escape(labels[i])}</text>")
    parts.append("</svg>")
    return Markup("".join(parts))
