"""slurm.compare: statistics, the report files, and unfinished runs, on real run directories."""

from __future__ import annotations

import csv
import json
import math

import pytest
from PIL import Image

from slurm.compare import collect, figure, paired_difference, report, rows, table
from train.cli import main

T_975_DF2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom


def test_paired_difference_is_a_t_interval_over_seeds_in_both():
    n, mean, low, high = paired_difference({0: 1.0, 1: 3.0, 2: 2.0, 7: 9.0}, {0: 0, 1: 1, 2: 1})
    half = T_975_DF2 * math.sqrt(1 / 3) / math.sqrt(3)  # diffs 1, 2, 1: sd sqrt(1/3)
    assert n == 3
    assert mean == pytest.approx(4 / 3)
    assert (low, high) == pytest.approx((4 / 3 - half, 4 / 3 + half))
    assert paired_difference({0: 2.0}, {0: 1.5}) == (1, 0.5, None, None)
    assert paired_difference({0: 2.0}, {1: 1.5}) == (0, None, None, None)


def results(sweep_dir, name):
    return json.loads((sweep_dir / "runs" / name / "results.json").read_text())


def test_report_of_a_sweep(real_sweep, capsys):
    sweep = real_sweep.sweep_dir
    assert main(["compare", str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith((sweep / "compare.md").read_text())
    lines = list(csv.DictReader((sweep / "compare.csv").open()))
    assert [(line["variant"], line["runs"]) for line in lines] == [
        ("baseline", "2 finished"),
        ("tmix deeper", "2 finished"),
    ]
    base = [results(sweep, f"isometric-baseline-s{seed}") for seed in (0, 1)]
    tmix = [results(sweep, f"isometric-tmix-deeper-s{seed}") for seed in (0, 1)]
    assert float(lines[0]["top1_mean"]) == pytest.approx((base[0]["top1"] + base[1]["top1"]) / 2)
    assert float(lines[1]["top5_std"]) == pytest.approx(
        abs(tmix[0]["top5"] - tmix[1]["top5"]) / math.sqrt(2)
    )
    assert int(lines[1]["params"]) == tmix[0]["params"] != base[0]["params"]
    diffs = [t["top1"] - b["top1"] for t, b in zip(tmix, base, strict=True)]
    assert lines[1]["paired_n"] == "2"
    assert float(lines[1]["top1_diff"]) == pytest.approx(sum(diffs) / 2)
    half = 12.706204736174696 * abs(diffs[0] - diffs[1]) / math.sqrt(2) / math.sqrt(2)
    assert float(lines[1]["top1_diff_high"]) == pytest.approx(sum(diffs) / 2 + half)
    assert "(n=2)" in printed
    with Image.open(sweep / "compare.png") as image:
        assert image.size == (1800, 450)


def test_unfinished_runs_are_shown_not_dropped(real_sweep, tmp_path):
    run_dirs = [*sorted((real_sweep.sweep_dir / "runs").iterdir()), real_sweep.unfinished]
    records = collect(run_dirs)
    assert sorted(record.state for record in records) == ["finished"] * 4 + ["unfinished"]
    lines = table(rows(records))
    assert [line["runs"] for line in lines] == ["2 finished, 1 unfinished", "2 finished"]
    assert lines[0]["top1_mean"] is not None  # over the finished runs only
    text = report(run_dirs, tmp_path / "out" / "cmp")
    assert "| isometric | baseline | - | 2 finished, 1 unfinished |" in text
    assert (tmp_path / "out" / "cmp.csv").is_file() and (tmp_path / "out" / "cmp.png").is_file()


def test_compare_refuses_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "neither a sweep directory nor a run directory" in capsys.readouterr().err


def test_figure_shows_the_paired_intervals_and_keeps_pairs_apart(real_sweep):
    import matplotlib.pyplot as plt

    report_rows = rows(collect([real_sweep.sweep_dir]))
    lines = table(report_rows)
    fig = figure(report_rows, lines)
    try:
        accuracy, verdict, _ = fig.axes
        (tmix,) = [line for line in lines if line["paired_n"]]
        (bars,) = verdict.containers  # the one variant: its mean and its interval
        assert bars.lines[0].get_xdata()[0] == pytest.approx(tmix["top1_diff"])
        (segment,) = bars.lines[2][0].get_segments()
        low, high = sorted(x for x, _ in segment)
        assert (low, high) == pytest.approx((tmix["top1_diff_low"], tmix["top1_diff_high"]))
        assert "tmix deeper (n=2)" in verdict.get_yticklabels()[0].get_text()
        # the pair's parameter counts are within 0.5%: where several models share the axis the
        # two points would sit on each other, so each is drawn 0.06 inch off its place
        for container, inches in zip(accuracy.containers, (-0.06, 0.06), strict=True):
            point = container.lines[0].get_xydata()
            low, high = accuracy.get_xlim()
            assert low < point[0][0] < high  # the axes still scale to the points
            shown = container.lines[0].get_transform().transform(point)[0][0]
            assert shown - accuracy.transData.transform(point)[0][0] == pytest.approx(
                inches * fig.dpi
            )
    finally:
        plt.close(fig)
