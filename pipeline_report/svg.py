"""Charts as inline SVG, drawn by pipeq itself (no plotting library): a small set of plot
types for report.html and the job's page.

A :class:`Chart` has a title, labelled axes (units in the labels), ticks and grid lines, and
data layers (lines, steps, bars, bands, notes). ``render()`` gives one ``<svg>`` element that
needs no stylesheet, script or external reference: presentation attributes only, so the
same text works inlined in a page and as a stand-alone image. Colours are the Okabe-Ito
palette (safe for colour-blind readers) and series also differ by dash pattern, so they stay
apart in grey-scale print.
"""

from __future__ import annotations

import math
from html import escape

#: Okabe & Ito (2008): blue, orange, bluish green, reddish purple, vermillion, sky blue, yellow
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442")
INK = "#222222"
GRID = "#e3e3e3"
BAND = "#f1f1f1"
FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"

WIDTH, HEIGHT = 720, 280
MARGIN = {"left": 70, "right": 16, "top": 46, "bottom": 48}


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2 or 5 x 10^k)."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, v = [], first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


def fmt(v: float) -> str:
    """A tick label: 12,000 -> 12k, 3,000,000 -> 3M; smaller numbers as they are."""
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:g}G"
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def _n(v: float) -> str:
    """A coordinate with one decimal, no trailing zeros: keeps the SVG small."""
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


class Chart:
    """One plot: x and y ranges in data units, drawn into a WIDTH x HEIGHT view box."""

    def __init__(self, chart_id: str, title: str, x_label: str, y_label: str,
                 x_range: tuple[float, float], y_range: tuple[float, float],
                 width: int = WIDTH, height: int = HEIGHT, left: int | None = None, bottom: int | None = None):
        self.id, self.title, self.x_label, self.y_label = chart_id, title, x_label, y_label
        self.x0, self.x1 = x_range
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1
        self.y0, self.y1 = y_range
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1
        self.w, self.h = width, height
        self.left = MARGIN["left"] if left is None else left
        self.pw = width - self.left - MARGIN["right"]
        self.bottom = MARGIN["bottom"] if bottom is None else bottom
        self.ph = height - MARGIN["top"] - self.bottom
        self.back: list[str] = []   # under the grid (bands)
        self.layers: list[str] = []  # the data
        self.legend_items: list[tuple[str, str, str, str]] = []  # label, colour, dash, kind
        self.x_ticks: list[tuple[float, str]] | None = None
        self.y_ticks: list[tuple[float, str]] | None = None
        self.notes: list[str] = []
        self.under: list[str] = []  # extra marks below the x axis (e.g. contig names)

    # data -> view box
    def sx(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * self.pw

    def sy(self, y: float) -> float:
        y = min(max(y, self.y0), self.y1)
        return MARGIN["top"] + self.ph - (y - self.y0) / (self.y1 - self.y0) * self.ph

    def line(self, xs, ys, label: str, colour: str, dash: str = "", width: float = 1.8, opacity: float = 1) -> None:
        pts = " ".join(f"{_n(self.sx(x))},{_n(self.sy(y))}" for x, y in zip(xs, ys))
        alpha = f' stroke-opacity="{opacity}"' if opacity < 1 else ""
        if pts:
            self.layers.append(f'<polyline class="data" points="{pts}" fill="none" stroke="{colour}" '
                               f'stroke-width="{width}" stroke-linejoin="round"{alpha}{_dash(dash)}/>')
        self.legend_items.append((label, colour, dash, f"line:{width}:{opacity}"))

    def steps(self, edges, values, label: str, colour: str, dash: str = "", fill: bool = True) -> None:
        """A histogram as one path: ``values[i]`` spans ``edges[i]..edges[i+1]``."""
        if not values:
            self.legend_items.append((label, colour, dash, "box" if fill else "line"))
            return
        base = _n(self.sy(self.y0))
        d = [f"M{_n(self.sx(edges[0]))},{base}"]
        for i, v in enumerate(values):
            y = _n(self.sy(v))
            d.append(f"V{y}H{_n(self.sx(edges[i + 1]))}")
        d.append(f"V{base}")
        path = "".join(d)
        if fill:
            self.layers.append(f'<path class="data" d="{path}Z" fill="{colour}" fill-opacity="0.35" stroke="none"/>')
        self.layers.append(f'<path class="data" d="{path}" fill="none" stroke="{colour}" stroke-width="1.5"{_dash(dash)}/>')
        self.legend_items.append((label, colour, dash, "box" if fill else "line"))

    def bars(self, lefts, rights, values, label: str, colour: str, hatch: bool = False) -> None:
        out = []
        for a, b, v in zip(lefts, rights, values):
            if v <= self.y0:
                continue
            x, y = self.sx(a), self.sy(v)
            out.append(f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(max(self.sx(b) - x, 0.6))}" '
                       f'height="{_n(self.sy(self.y0) - y)}"/>')
        if out:
            self.layers.append(f'<g class="data" fill="{colour}" stroke="{INK}" stroke-width="0.6">{"".join(out)}</g>')
        self.legend_items.append((label, colour, "", "box"))

    def band(self, x0: float, x1: float, label: str, shade: bool) -> None:
        """A shaded or plain vertical band (a contig), labelled at the top when it fits."""
        a, b = self.sx(x0), self.sx(x1)
        if shade:
            self.back.append(f'<rect x="{_n(a)}" y="{MARGIN["top"]}" width="{_n(b - a)}" height="{self.ph}" fill="{BAND}"/>')
        if label and (b - a) >= 7 * len(label):
            self.back.append(f'<text x="{_n((a + b) / 2)}" y="{MARGIN["top"] + 12}" text-anchor="middle" '
                             f'font-size="11" fill="#555">{escape(label)}</text>')

    def hline(self, y: float, label: str, colour: str = INK, dash: str = "4 3") -> None:
        yy = _n(self.sy(y))
        self.layers.append(f'<line x1="{self.left}" x2="{self.left + self.pw}" y1="{yy}" y2="{yy}" '
                           f'stroke="{colour}" stroke-width="1"{_dash(dash)}/>')
        self.legend_items.append((label, colour, dash, "line"))

    def name_below(self, x: float, text: str) -> None:
        """A slanted label under the x axis at data x (for bands too narrow to label inside)."""
        xx, yy = _n(self.sx(x)), MARGIN["top"] + self.ph + 10
        self.under.append(f'<text x="{xx}" y="{yy}" transform="rotate(-50 {xx} {yy})" text-anchor="end" '
                          f'font-size="10" fill="#444">{escape(text)}</text>')

    def note(self, text: str) -> None:
        """A message in the middle of the plot area (e.g. nothing to draw)."""
        self.notes.append(text)

    def render(self) -> str:
        top, bottom = MARGIN["top"], MARGIN["top"] + self.ph
        right = self.left + self.pw
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="{self.id}" class="plot" viewBox="0 0 {self.w} {self.h}" '
               f'role="img" aria-labelledby="{self.id}-title" font-family="{FONT}" font-size="12" fill="{INK}">',
               f'<title id="{self.id}-title">{escape(self.title)}</title>',
               f'<rect width="{self.w}" height="{self.h}" fill="#fff"/>',
               f'<text class="title" x="{self.left}" y="18" font-size="14" font-weight="600">{escape(self.title)}</text>']
        out += self.back
        grid, labels = [], []
        for v, text in self.y_ticks if self.y_ticks is not None else [(t, fmt(t)) for t in nice_ticks(self.y0, self.y1)]:
            if not self.y0 - 1e-9 <= v <= self.y1 + 1e-9:
                continue
            y = _n(self.sy(v))
            grid.append(f'<line x1="{self.left}" x2="{right}" y1="{y}" y2="{y}"/>')
            labels.append(f'<text x="{self.left - 6}" y="{y}" dy="0.32em" text-anchor="end">{escape(text)}</text>')
        for v, text in self.x_ticks if self.x_ticks is not None else [(t, fmt(t)) for t in nice_ticks(self.x0, self.x1, 7)]:
            if not self.x0 - 1e-9 <= v <= self.x1 + 1e-9:
                continue
            x = _n(self.sx(v))
            grid.append(f'<line x1="{x}" x2="{x}" y1="{bottom}" y2="{bottom + 4}" stroke="{INK}"/>')
            labels.append(f'<text x="{x}" y="{bottom + 17}" text-anchor="middle">{escape(text)}</text>')
        out.append(f'<g class="grid" stroke="{GRID}" stroke-width="1">{"".join(grid)}</g>')
        out += self.layers
        out.append(f'<path class="axes" d="M{self.left},{top}V{bottom}H{right}" fill="none" stroke="{INK}" stroke-width="1"/>')
        out.append(f'<g class="ticks">{"".join(labels)}</g>')
        out += self.under
        out.append(f'<text class="x-label" x="{_n(self.left + self.pw / 2)}" y="{self.h - 8}" text-anchor="middle">{escape(self.x_label)}</text>')
        cy = _n(top + self.ph / 2)
        out.append(f'<text class="y-label" x="14" y="{cy}" transform="rotate(-90 14 {cy})" text-anchor="middle">{escape(self.y_label)}</text>')
        for i, text in enumerate(self.notes):
            out.append(f'<text class="note" x="{_n(self.left + self.pw / 2)}" y="{_n(top + self.ph / 2 + 16 * i)}" '
                       f'text-anchor="middle" fill="#555">{escape(text)}</text>')
        out.append(self._legend())
        out.append("</svg>")
        return "".join(out)

    def _legend(self) -> str:
        items = [i for i in self.legend_items if i[0]]
        if not items:
            return ""
        x, parts = self.left, []
        # a row under the title, left-aligned with the plot area
        for label, colour, dash, kind in items:
            if kind == "box":
                mark = f'<rect x="{x}" y="26" width="16" height="10" fill="{colour}" fill-opacity="0.6" stroke="{colour}"/>'
            else:
                _, width, opacity = (kind + "::").split(":")[:3]
                alpha = f' stroke-opacity="{opacity}"' if opacity and float(opacity) < 1 else ""
                mark = (f'<line x1="{x}" x2="{x + 18}" y1="31" y2="31" stroke="{colour}" '
                        f'stroke-width="{max(float(width or 2.2), 2.2)}"{alpha}{_dash(dash)}/>')
            parts.append(f'{mark}<text x="{x + 22}" y="35">{escape(label)}</text>')
            x += int(6.6 * len(label)) + 40
        return f'<g class="legend">{"".join(parts)}</g>'


def _dash(dash: str) -> str:
    return f' stroke-dasharray="{dash}"' if dash else ""


def hbars(chart_id: str, title: str, x_label: str, y_label: str, rows: list[tuple[str, float, str]],
          colours: list[str] | None = None) -> str:
    """A horizontal bar chart: one row per (category, value, annotation), categories as the
    y axis' tick labels, the annotation after each bar."""
    n = max(len(rows), 1)
    height = MARGIN["top"] + MARGIN["bottom"] + 26 * n
    left = min(max(7 * max((len(r[0]) for r in rows), default=4) + 24, 90), 260)
    top = max((r[1] for r in rows), default=0)
    c = Chart(chart_id, title, x_label, y_label, (0, top * 1.22 if top > 0 else 1), (0, n), height=height, left=left)
    c.y_ticks = [(n - i - 0.5, r[0]) for i, r in enumerate(rows)]
    out = []
    for i, (name, value, note) in enumerate(rows):
        y = c.sy(n - i - 0.2)
        hgt = c.sy(n - i - 0.8) - y
        colour = (colours or [PALETTE[0]])[i % len(colours or [PALETTE[0]])]
        w = c.sx(value) - c.sx(0)
        if value > 0:
            out.append(f'<rect x="{_n(c.sx(0))}" y="{_n(y)}" width="{_n(max(w, 1))}" height="{_n(hgt)}" fill="{colour}" stroke="{INK}" stroke-width="0.6"/>')
        out.append(f'<text x="{_n(c.sx(0) + max(w, 0) + 5)}" y="{_n(y + hgt / 2)}" dy="0.32em" font-size="11">{escape(note)}</text>')
    c.layers.append(f'<g class="data">{"".join(out)}</g>')
    return c.render()
