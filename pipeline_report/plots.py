"""The report's plots, from the files a run of pipeline.sh leaves: depth along the contigs
(samtools depth, binned as it streams), the coverage and insert-size distributions
(samtools stats' COV and IS sections), base quality per cycle before and after trimming and
fastp's filter counts (fastp.json), and variant QUAL and depth histograms, SNPs and indels
apart (the variants bcftools query listed).

:func:`build` returns :class:`Figure` objects; :func:`section_html` is their HTML for
report.html and :func:`write_json` the same for the job's page (``plots.json``).
Standard library only: pipeline.sh runs it with the system's python3.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import asdict, dataclass
from html import escape

from pipeline_report import svg
from pipeline_report.svg import PALETTE, Chart

#: contigs drawn one by one along the depth plot; the rest are pooled into one block
DRAWN_CONTIGS = 20
#: bins along the drawn contigs (about one per pixel column of the plot)
DEPTH_BINS = 600
#: the share of the axis the pooled block may take at most
POOLED_WIDTH = 0.2
#: histogram x ranges end where this share of the data is covered
TAIL = 0.995

BLUE, ORANGE, GREEN, PURPLE, VERMILLION, SKY = PALETTE[:6]


@dataclass
class Figure:
    """One plot: ``id`` is stable (tests and the page use it), ``svg`` one <svg> element."""

    id: str
    title: str
    caption: str
    svg: str


# ---- depth along the contigs ----------------------------------------------------------------
@dataclass
class DepthLayout:
    """Which contigs are drawn, their bins, and the pooled rest."""

    drawn: list[tuple[str, int]]
    pooled: list[tuple[str, int]]
    bin_size: int


def depth_layout(contigs: list[tuple[str, int]], drawn: int = DRAWN_CONTIGS, bins: int = DEPTH_BINS) -> DepthLayout:
    """The longest ``drawn`` contigs in reference order, binned so that all of them together
    make about ``bins`` bins; the others are pooled."""
    longest = set(sorted(range(len(contigs)), key=lambda i: -contigs[i][1])[:drawn])
    shown = [c for i, c in enumerate(contigs) if i in longest]
    rest = [c for i, c in enumerate(contigs) if i not in longest]
    total = sum(length for _, length in shown)
    return DepthLayout(shown, rest, max(1, math.ceil(total / bins)))


#: sums ``samtools depth -aa -b drawn.bed`` lines (contig, position, depth: every position of
#: the drawn contigs, so a contig's n-th line is its position n) into bins as they stream by,
#: printing one line per bin (contig, bin index, summed depth). A line counter rather than the
#: position field: mawk does ~10 M lines/s this way, and Python sees only the bins.
BIN_AWK = r"""
$1 != chrom { if (n) print chrom "\t" bin "\t" sum; chrom = $1; bin = 0; n = 0; sum = 0 }
{ sum += $3 }
++n == size { print chrom "\t" bin "\t" sum; bin++; n = 0; sum = 0 }
END { if (n) print chrom "\t" bin "\t" sum }
"""


def read_bins(lines, layout: DepthLayout) -> dict[str, list[float]]:
    """Mean depth per bin of each drawn contig from the lines :data:`BIN_AWK` prints."""
    per = {name: [0.0] * math.ceil(length / layout.bin_size) for name, length in layout.drawn}
    lengths = dict(layout.drawn)
    for line in lines:
        name, index, total = line.rstrip("\n").split("\t")
        i = int(index)
        if name in per and i < len(per[name]):
            per[name][i] = float(total) / min(layout.bin_size, lengths[name] - i * layout.bin_size)
    return per


def pooled_depth(layout: DepthLayout, mean_depths: dict[str, float]) -> float:
    """The pooled contigs' mean depth, length-weighted, from samtools coverage's per-contig
    means: no second pass over their alignments."""
    total = sum(length for _, length in layout.pooled)
    return sum(mean_depths.get(name, 0.0) * length for name, length in layout.pooled) / total if total else 0.0


def _unit(length: int) -> tuple[float, str]:
    if length >= 10_000_000:
        return 1e6, "Mb"
    if length >= 10_000:
        return 1e3, "kb"
    return 1, "bp"


def depth_figure(layout: DepthLayout, per: dict[str, list[float]], pooled_mean: float, mean_depth: float) -> Figure:
    drawn_len = sum(length for _, length in layout.drawn)
    pooled_len = sum(length for _, length in layout.pooled)
    pooled_w = min(pooled_len, POOLED_WIDTH / (1 - POOLED_WIDTH) * drawn_len) if layout.pooled else 0
    axis_len = drawn_len + pooled_w
    values = sorted([v for vs in per.values() for v in vs] + ([pooled_mean] if layout.pooled else []))
    top = values[-1] if values else 0
    p99 = values[int(0.99 * (len(values) - 1))] if values else 0
    clipped = top > 3 * p99 > 0
    ymax = (p99 * 1.25 if clipped else top * 1.1) or 1
    div, unit = _unit(max((length for _, length in layout.drawn), default=1))
    plot_w = svg.WIDTH - svg.MARGIN["left"] - svg.MARGIN["right"]
    # bands too narrow for position ticks: the contigs' names go slanted under the axis instead
    narrow = sum(1 for _, length in layout.drawn if length / (axis_len or 1) * plot_w < 60) > len(layout.drawn) / 2
    x_label = "contig (the longest, in reference order)" if narrow else f"position in each contig ({unit})"
    c = Chart("plot-depth", "Depth along the reference", x_label, "mean depth (x)", (0, axis_len or 1), (0, ymax),
              height=svg.HEIGHT + (70 if narrow else 0), bottom=svg.MARGIN["bottom"] + (70 if narrow else 0))
    ticks, offset = [], 0
    for i, (name, length) in enumerate(layout.drawn):
        c.band(offset, offset + length, "" if narrow else name, shade=i % 2 == 0)
        width_px = length / (axis_len or 1) * c.pw
        if narrow and width_px >= 9:
            c.name_below(offset + length / 2, name if len(name) <= 14 else name[:13] + "…")
        if width_px >= 60 and not narrow:
            for t in svg.nice_ticks(0, length / div, max(1, int(width_px // 70))):
                if t * div < length and (t > 0 or i == 0):  # a contig's 0 would sit on the last one's end
                    ticks.append((offset + t * div, svg.fmt(t)))
        bins = per.get(name, [])
        edges = [offset + min(j * layout.bin_size, length) for j in range(len(bins) + 1)]
        c.steps(edges, bins, "", BLUE, fill=True)
        offset += length
    if layout.pooled:
        label = f"{len(layout.pooled)} other contigs, pooled"
        c.band(offset, offset + pooled_w, label if pooled_w / axis_len * c.pw >= 7 * len(label) else f"{len(layout.pooled)} pooled",
               shade=len(layout.drawn) % 2 == 0)
        if narrow:
            c.name_below(offset + pooled_w / 2, f"{len(layout.pooled)} others")
        c.steps([offset, offset + pooled_w], [pooled_mean], "", VERMILLION, fill=True)
    c.x_ticks = ticks
    c.legend_items = [("depth per bin", BLUE, "", "box")]
    if layout.pooled:
        c.legend_items.append(("other contigs, pooled", VERMILLION, "", "box"))
    c.hline(mean_depth, f"mean {mean_depth:.1f}x")
    if not values:
        c.note("no depth to draw")
    size = f"{layout.bin_size:,} bp" if layout.bin_size < 10_000 else f"{layout.bin_size / 1000:,.0f} kb"
    caption = (f"Mean depth in bins of {size} along the {'longest ' if layout.pooled else ''}{len(layout.drawn)} "
               f"contig{'s' if len(layout.drawn) != 1 else ''} (samtools depth).")
    if layout.pooled:
        caption += (f" The other {len(layout.pooled)} contigs ({pooled_len:,} bp) are pooled into one block at the right"
                    f"{', drawn narrower than their length' if pooled_w < pooled_len else ''}: their mean depth is {pooled_mean:.1f}x (samtools coverage).")
    if clipped:
        caption += f" The axis stops at {ymax:.0f}x; bins above reach the top (the highest is {top:.0f}x)."
    return Figure("plot-depth", c.title, caption, c.render())


def depth_along(bam: str, contigs: list[tuple[str, int]], work: str, mean_depth: float,
                mean_depths: dict[str, float]) -> Figure:
    """``samtools depth`` over the drawn contigs piped through :data:`BIN_AWK`: one pass over
    their alignments, and nothing per base is kept or handed to Python."""
    layout = depth_layout(contigs)
    bed = os.path.join(work, "depth_contigs.bed")
    with open(bed, "w") as fh:
        fh.writelines(f"{name}\t0\t{length}\n" for name, length in layout.drawn)
    # -b only when some contigs are pooled: it costs ~10 % more than a plain pass
    depth = subprocess.Popen(["samtools", "depth", "-aa", *(["-b", bed] if layout.pooled else []), bam],
                             stdout=subprocess.PIPE)
    with subprocess.Popen(["awk", "-F", "\t", "-v", f"size={layout.bin_size}", BIN_AWK],
                          stdin=depth.stdout, stdout=subprocess.PIPE, text=True) as binner:
        depth.stdout.close()  # binner holds the pipe; depth gets SIGPIPE if binner dies
        per = read_bins(binner.stdout, layout)
    if depth.wait() or binner.returncode:
        raise RuntimeError(f"samtools depth | awk failed (exit {depth.returncode}, {binner.returncode})")
    return depth_figure(layout, per, pooled_depth(layout, mean_depths), mean_depth)


# ---- samtools stats sections ------------------------------------------------------------------
def stats_sections(path: str) -> dict[str, list[list[str]]]:
    """The COV and IS lines of a samtools stats file, split into fields."""
    out: dict[str, list[list[str]]] = {"COV": [], "IS": []}
    with open(path) as fh:
        for line in fh:
            key = line[:4].split("\t", 1)[0]
            if key in out:
                out[key].append(line.rstrip("\n").split("\t")[1:])
    return out


def _cut(counts: list[tuple[int, int]], tail: float = TAIL) -> int:
    """The x where ``tail`` of the total count is reached."""
    total = sum(n for _, n in counts)
    run = 0
    for x, n in counts:
        run += n
        if total and run >= tail * total:
            return x
    return counts[-1][0] if counts else 0


def _rebin(counts: dict[int, int], lo: int, hi: int, max_bins: int) -> tuple[list[float], list[float]]:
    """Counts per integer x in [lo, hi] grouped into at most ``max_bins`` equal bins: edges, sums."""
    width = max(1, math.ceil((hi - lo + 1) / max_bins))
    sums: list[float] = []
    edges: list[float] = [lo - 0.5]
    x = lo
    while x <= hi:
        sums.append(sum(counts.get(v, 0) for v in range(x, min(x + width, hi + 1))))
        x += width
        edges.append(min(x, hi + 1) - 0.5)
    return edges, sums


def coverage_figure(cov_rows: list[list[str]], reference_length: int, covered_bases: int) -> Figure:
    counts: dict[int, int] = {}
    over = 0
    for row in cov_rows:
        if row[0].endswith("<]"):
            over += int(row[2])
        else:
            counts[int(row[1])] = counts.get(int(row[1]), 0) + int(row[2])
    counts[0] = max(reference_length - covered_bases, 0)
    ordered = sorted(counts.items())
    hi = max(_cut(ordered), 1)
    hi = min(max(counts), math.ceil(hi * 1.1) + 1) if counts else 1
    edges, sums = _rebin(counts, 0, hi, 300)
    total = max(reference_length, 1)
    pct = [100.0 * s / total for s in sums]
    c = Chart("plot-coverage", "Coverage distribution", "depth (x, reads over a base)", "share of reference bases (%)",
              (edges[0], edges[-1]), (0, (max(pct) if pct else 1) * 1.1 or 1))
    c.steps(edges, pct, "reference bases", BLUE)
    zero = 100.0 * counts[0] / total
    caption = (f"Share of the reference's {reference_length:,} bases at each depth (samtools stats COV, mapped reads). "
               f"{zero:.2f} % of bases have no read.")
    if over:
        caption += f" {100.0 * over / total:.2f} % are above 1000x (not drawn)."
    return Figure("plot-coverage", c.title, caption, c.render())


def insert_size_figure(is_rows: list[list[str]]) -> Figure | None:
    counts = {int(r[0]): int(r[1]) for r in is_rows if len(r) >= 2 and int(r[0]) > 0 and int(r[1]) > 0}
    if not counts:
        return None
    ordered = sorted(counts.items())
    lo = ordered[0][0]
    low_cut = _cut(ordered, 1 - TAIL)
    hi = _cut(ordered)
    lo = max(lo, low_cut - max(10, (hi - low_cut) // 10))
    edges, sums = _rebin(counts, lo, hi, 300)
    c = Chart("plot-insert-size", "Insert size distribution", "insert size (bp)", "read pairs",
              (edges[0], edges[-1]), (0, (max(sums) if sums else 1) * 1.1 or 1))
    c.steps(edges, sums, "read pairs", GREEN)
    total = sum(counts.values())
    median = next(x for x, run in _running(ordered) if run >= total / 2)
    caption = (f"Insert sizes of {total:,} read pairs (samtools stats IS, all orientations); median {median:,} bp. "
               f"Drawn from {lo:,} to {hi:,} bp, {100 * TAIL:g} % of pairs.")
    return Figure("plot-insert-size", c.title, caption, c.render())


def _running(ordered):
    run = 0
    for x, n in ordered:
        run += n
        yield x, run


# ---- fastp ------------------------------------------------------------------------------------
def quality_figure(fp: dict) -> Figure:
    series = []
    for read, colour in (("read1", BLUE), ("read2", ORANGE)):
        for when, dash in (("before", "before"), ("after", "")):
            curve = (fp.get(f"{read}_{when}_filtering") or {}).get("quality_curves", {}).get("mean")
            if curve:
                name = "R1" if read == "read1" else "R2"
                series.append((f"{name} {when} trimming", curve, colour, dash))
    cycles = max((len(s[1]) for s in series), default=1)
    top = max((max(s[1]) for s in series if s[1]), default=40)
    c = Chart("plot-base-quality", "Base quality per cycle", "cycle (position in the read, bp)", "mean base quality (Phred)",
              (1, max(cycles, 2)), (0, max(42, math.ceil(top) + 2)))
    # before: a broad pale line; after: a thin line on top, so both show where they coincide
    for label, curve, colour, dash in series:
        if dash:
            c.line(range(1, len(curve) + 1), curve, label, colour, width=6, opacity=0.35)
        else:
            c.line(range(1, len(curve) + 1), curve, label, colour, width=1.6)
    if not series:
        c.note("fastp reported no quality curves")
    caption = ("Mean Phred quality at each position of the reads, before (broad pale lines) and after (thin lines) fastp's trimming "
               "and filtering (fastp.json).")
    return Figure("plot-base-quality", c.title, caption, c.render())


FILTERS = (("low_quality_reads", "low quality"), ("too_many_N_reads", "too many N"), ("too_short_reads", "too short"),
           ("too_long_reads", "too long"), ("low_complexity_reads", "low complexity"))


def filtering_figure(fp: dict) -> Figure:
    fr = fp.get("filtering_result") or {}
    before = (fp.get("summary") or {}).get("before_filtering", {})
    after = (fp.get("summary") or {}).get("after_filtering", {})
    total = before.get("total_reads") or sum(v for v in fr.values() if isinstance(v, (int, float))) or 0
    pct = (lambda n: f"{n:,} ({100.0 * n / total:.2f} %)") if total else (lambda n: f"{n:,}")
    rows = [("kept", fr.get("passed_filter_reads", 0), pct(fr.get("passed_filter_reads", 0)))]
    colours = [GREEN]
    for key, label in FILTERS:
        if key in fr:
            rows.append((f"removed: {label}", fr[key], pct(fr[key])))
            colours.append(VERMILLION)
    adapters = (fp.get("adapter_cutting") or {}).get("adapter_trimmed_reads")
    if adapters is not None:
        rows.append(("adapter trimmed, kept", adapters, pct(adapters)))
        colours.append(SKY)
    svg_text = svg.hbars("plot-filtering", "What fastp kept and removed", "reads (R1 and R2 counted apart)", "outcome",
                         rows, colours)
    trimmed = before.get("total_bases", 0) - after.get("total_bases", 0)
    caption = (f"fastp's filter counts: reads kept, reads removed and why, and reads whose adapters were cut "
               f"(they stay in). {trimmed:,} of {before.get('total_bases', 0):,} bases were removed in all"
               f"{', ' + format((fp.get('adapter_cutting') or {}).get('adapter_trimmed_bases', 0), ',') + ' of them adapter bases' if adapters is not None else ''}.")
    return Figure("plot-filtering", "What fastp kept and removed", caption, svg_text)


# ---- variants ---------------------------------------------------------------------------------
def _bin_width(top: float, target: int = 25) -> float:
    if top <= 0:
        return 1
    raw = top / target
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def variant_histogram(chart_id: str, title: str, x_label: str, values: dict[str, list[float]], integer: bool,
                      what: str) -> Figure:
    allv = [v for vs in values.values() for v in vs]
    top = max(allv, default=0)
    width = _bin_width(top)
    if integer:
        width = max(1, round(width))
    n = max(1, math.floor(top / width) + 1)
    c = Chart(chart_id, title, x_label, "variants", (0, n * width), (0, 1))
    counts = {}
    for kind, vs in values.items():
        h = [0] * n
        for v in vs:
            h[min(int(v // width), n - 1)] += 1
        counts[kind] = h
    ymax = max((max(h) for h in counts.values()), default=0)
    c.y0, c.y1 = 0, max(ymax * 1.15, 1)
    if ymax < 5:
        c.y_ticks = [(t, str(t)) for t in range(0, int(c.y1) + 1)]
    for k, (kind, colour) in enumerate((("SNP", BLUE), ("INDEL", ORANGE))):
        h = counts.get(kind, [0] * n)
        lefts = [i * width + (k * 0.5) * width for i in range(n)]
        rights = [a + 0.5 * width for a in lefts]
        c.bars(lefts, rights, h, f"{'SNPs' if kind == 'SNP' else 'indels'} ({len(values.get(kind, []))})", colour)
    if not allv:
        c.note("no variants called")
    caption = (f"{what} of the called variants, SNPs and indels apart, in bins of {width:g}"
               f"{' (other types, e.g. MNPs, are left out)' if values.get('other') else ''}.")
    return Figure(chart_id, title, caption, c.render())


def variant_figures(variants: list[dict]) -> list[Figure]:
    qual: dict[str, list[float]] = {"SNP": [], "INDEL": [], "other": []}
    depth: dict[str, list[float]] = {"SNP": [], "INDEL": [], "other": []}
    for v in variants:
        kind = v["type"] if v["type"] in ("SNP", "INDEL") else "other"
        if v.get("qual") is not None:
            qual[kind].append(v["qual"])
        dp = str(v.get("dp", "."))
        if dp.isdigit():
            depth[kind].append(int(dp))
    return [
        variant_histogram("plot-variant-qual", "Variant quality", "QUAL (Phred-scaled)", qual, False, "QUAL"),
        variant_histogram("plot-variant-depth", "Variant depth", "depth at the variant (reads, FORMAT/DP)", depth, True,
                          "Read depth"),
    ]


# ---- all of them ------------------------------------------------------------------------------
def build(*, sample: str, fastp: dict, stats_path: str, bam: str, contigs: list[tuple[str, int]], work: str,
          mean_depth: float, mean_depths: dict[str, float], covered_bases: int, paired: bool,
          variants: list[dict]) -> list[Figure]:
    """Every plot of a run, in the order the report shows them. ``contigs``: (name, length)
    in reference order; ``mean_depths``: samtools coverage's mean depth per contig."""
    sections = stats_sections(stats_path)
    genome = sum(length for _, length in contigs)
    figs = [depth_along(bam, contigs, work, mean_depth, mean_depths), coverage_figure(sections["COV"], genome, covered_bases)]
    if paired:
        fig = insert_size_figure(sections["IS"])
        if fig:
            figs.append(fig)
    figs += [quality_figure(fastp), filtering_figure(fastp)]
    figs += variant_figures(variants)
    return figs


def section_html(figs: list[Figure]) -> str:
    """The figures for report.html: one <figure> each, the SVG inline."""
    return "\n".join(f'<figure id="fig-{f.id[5:]}">{f.svg}<figcaption>{escape(f.caption)}</figcaption></figure>'
                     for f in figs)


def write_json(figs: list[Figure], path: str) -> None:
    """plots.json: what the job's page shows under the summary (each SVG as an image)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"plots": [asdict(f) for f in figs]}, fh, separators=(",", ":"))
    os.replace(tmp, path)
