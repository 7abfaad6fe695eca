"""pipeline_report's pieces on their own: ticks, the depth layout for many contigs, the
streaming binner (real awk), histograms with nothing to draw, names that are not markup,
and fastp.html's rewrite."""

from __future__ import annotations

import subprocess

import pytest

from pipeline_report import fastp_html, plots, svg
from tests.support import report_check


def test_nice_ticks_are_round_and_cover_the_range():
    assert svg.nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert svg.nice_ticks(0, 41, 5) == [0, 10, 20, 30, 40]
    assert svg.nice_ticks(3, 3) == [3]
    assert svg.fmt(12_000) == "12k" and svg.fmt(3_000_000) == "3M" and svg.fmt(250) == "250"


def assembly(n: int = 500) -> list[tuple[str, int]]:
    # a draft assembly: lengths falling from 90 kb, in no particular order
    return [(f"ctg{i:03d}", 1_000 + (i * 7919) % 90_000) for i in range(n)]


def test_many_contigs_the_longest_drawn_in_reference_order_the_rest_pooled():
    contigs = assembly()
    layout = plots.depth_layout(contigs)
    longest = sorted(contigs, key=lambda c: -c[1])[: plots.DRAWN_CONTIGS]
    assert sorted(layout.drawn) == sorted(longest)
    assert layout.drawn == [c for c in contigs if c in longest]  # reference order kept
    assert len(layout.pooled) == 500 - plots.DRAWN_CONTIGS
    bins = sum(-(-length // layout.bin_size) for _, length in layout.drawn)
    assert plots.DEPTH_BINS - plots.DRAWN_CONTIGS <= bins <= plots.DEPTH_BINS + plots.DRAWN_CONTIGS


def run_binner(lines: list[str], layout) -> list[str]:
    out = subprocess.run(["awk", "-F", "\t", "-v", f"size={layout.bin_size}", plots.BIN_AWK],
                         input="".join(lines), capture_output=True, text=True, check=True)
    return out.stdout.splitlines(keepends=True)


def test_the_binner_sums_per_bin_and_the_rest_comes_from_coverage():
    layout = plots.DepthLayout(drawn=[("a", 10), ("b", 5)], pooled=[("c", 4), ("d", 12)], bin_size=4)
    # samtools depth -aa: every position of the drawn contigs, zeros too
    depth_a = [2] * 6 + [0, 0, 8, 0]
    depth = [f"a\t{i + 1}\t{d}\n" for i, d in enumerate(depth_a)] + [f"b\t{i + 1}\t{d}\n" for i, d in enumerate([0] * 4 + [3])]
    per = plots.read_bins(run_binner(depth, layout), layout)
    assert per == {"a": [2.0, 1.0, 4.0], "b": [0.0, 3.0]}  # a's last bin is 2 bp long
    assert plots.pooled_depth(layout, {"c": 5.0, "d": 1.0, "a": 99.0}) == (5 * 4 + 1 * 12) / 16


def test_depth_plot_of_500_contigs_stays_readable():
    contigs = assembly()
    layout = plots.depth_layout(contigs)
    per = {name: [30.0] * -(-length // layout.bin_size) for name, length in layout.drawn}
    fig = plots.depth_figure(layout, per, 12.5, 29.0)
    parsed = report_check.check_plots(fig.svg, ["plot-depth"])
    assert parsed.plots["plot-depth"].data_marks >= plots.DRAWN_CONTIGS
    assert f"other {500 - plots.DRAWN_CONTIGS} contigs" in fig.caption and "12.5x" in fig.caption
    # no more contig labels than contigs drawn, and none wider than its band (checked on draw)
    assert fig.svg.count('fill="#555">ctg') <= plots.DRAWN_CONTIGS
    assert "pooled" in fig.svg


def test_names_from_the_reference_are_text_not_markup():
    layout = plots.depth_layout([("<img/src=x/onerror=alert(1)>", 100_000)])
    fig = plots.depth_figure(layout, {layout.drawn[0][0]: [1.0] * 600}, 0, 1.0)
    assert "<img" not in fig.svg and "&lt;img" in fig.svg


def test_no_variants_still_a_labelled_plot_that_says_so():
    qual, depth = plots.variant_figures([])
    for fig in (qual, depth):
        assert "no variants called" in fig.svg
        p = report_check.parse(fig.svg).plots[fig.id]
        assert p.x_label and p.y_label


def test_snps_and_indels_are_counted_apart():
    variants = [{"type": "SNP", "qual": 50.0, "dp": "20"}] * 3 + [{"type": "INDEL", "qual": 120.0, "dp": "9"}]
    qual, depth = plots.variant_figures(variants)
    assert "SNPs (3)" in qual.svg and "indels (1)" in qual.svg
    assert "SNPs (3)" in depth.svg and "indels (1)" in depth.svg


FASTP_HEAD = ("<html><head><meta http-equiv=\"content-type\" content=\"text/html;charset=utf-8\" /><title>fastp report</title>"
              "<script src='http://opengene.org/plotly-1.2.0.min.js'></script>\n\n<script type='text/javascript'>\n"
              "    window.Plotly || document.write('<script src=\"https://cdn.plot.ly/plotly-1.2.0.min.js\"><\\/script>')\n"
              "</script>\n<script type=\"text/javascript\">var x = 1;</script></head><body></body></html>")


def test_fastp_html_points_at_the_copy_beside_it(tmp_path):
    page = tmp_path / "fastp.html"
    page.write_text(FASTP_HEAD)
    assert fastp_html.make_offline(str(page))
    text = page.read_text()
    assert '<script src="plotly.min.js"></script>' in text
    assert "http:" not in text and "https:" not in text and "document.write" not in text
    assert "var x = 1;" in text


@pytest.mark.parametrize("body", ["<html><head><script src='x.js'></script></head></html>", "<html></html>"])
def test_fastp_html_of_another_shape_is_left_alone(tmp_path, body):
    page = tmp_path / "fastp.html"
    page.write_text(body)
    assert not fastp_html.make_offline(str(page))
    assert page.read_text() == body
