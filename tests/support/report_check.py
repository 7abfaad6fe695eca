"""Reading a finished run's report.html the way the tests check it: every ``src``/``href``
(nothing may point outside the report), and each plot's figure (data drawn, axes labelled)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

#: the plots of a paired-end run, in the report's order; single-end runs have no insert sizes
PAIRED_PLOTS = ["plot-depth", "plot-coverage", "plot-insert-size", "plot-base-quality", "plot-filtering",
                "plot-variant-qual", "plot-variant-depth"]
SINGLE_PLOTS = [p for p in PAIRED_PLOTS if p != "plot-insert-size"]


@dataclass
class Plot:
    id: str
    data_marks: int = 0       # drawn data: path/polyline/rect with geometry, inside class="data"
    x_label: str = ""
    y_label: str = ""
    title: str = ""


@dataclass
class Parsed:
    urls: list[str] = field(default_factory=list)   # every src, href and xlink:href value
    plots: dict[str, Plot] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


class _Reader(HTMLParser):
    """One pass: URLs anywhere; inside each <svg class="plot">, its data marks and labels.
    (pipeq's plots put class="data" on a path or polyline, or on a <g> of rects.)"""

    def __init__(self):
        super().__init__()
        self.out = Parsed()
        self.plot: Plot | None = None
        self.in_data_g = False
        self.text_into: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k, v in attrs:
            if k in ("src", "href", "xlink:href") and v is not None:
                self.out.urls.append(v)
        classes = (a.get("class") or "").split()
        if tag == "svg" and "plot" in classes and a.get("id"):
            self.plot = Plot(a["id"])
            self.out.plots[a["id"]] = self.plot
            self.out.order.append(a["id"])
        if self.plot is None:
            return
        if tag == "g" and "data" in classes:
            self.in_data_g = True
        if ((tag == "path" and "data" in classes and a.get("d"))
                or (tag == "polyline" and "data" in classes and a.get("points"))
                or (tag == "rect" and self.in_data_g and float(a.get("width") or 0) > 0 and float(a.get("height") or 0) > 0)):
            self.plot.data_marks += 1
        if tag == "text":
            self.text_into = next((c for c in ("x-label", "y-label", "title") if c in classes), None)

    def handle_endtag(self, tag):
        if self.plot is None:
            return
        if tag == "g":
            self.in_data_g = False
        elif tag == "text":
            self.text_into = None
        elif tag == "svg":
            self.plot = None

    def handle_data(self, data):
        if self.plot is not None and self.text_into:
            name = self.text_into.replace("-", "_")
            setattr(self.plot, name, getattr(self.plot, name) + data)


def parse(html: str) -> Parsed:
    r = _Reader()
    r.feed(html)
    r.close()
    return r.out


def external(urls: list[str]) -> list[str]:
    """The URLs that leave the document: anything but ``#fragment`` (and ``data:``)."""
    return [u for u in urls if not (u.startswith("#") or u.startswith("data:"))]


def check_plots(html: str, expected: list[str]) -> Parsed:
    """Asserts each expected plot is there, draws data and has both axes labelled, and that
    no src/href points outside the document."""
    p = parse(html)
    assert p.order == expected, f"plots {p.order}, expected {expected}"
    for pid in expected:
        plot = p.plots[pid]
        assert plot.data_marks > 0, f"{pid} draws nothing"
        assert plot.x_label.strip() and plot.y_label.strip(), f"{pid}: axes not labelled ({plot})"
        assert plot.title.strip(), f"{pid} has no title"
    assert not external(p.urls), f"report.html points outside itself: {external(p.urls)[:5]}"
    return p
