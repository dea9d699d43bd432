"""The comparison report: each baseline against its matched template variants, over seeds.

One row per model and variant (+ mode): parameters, FLOPs, images/s, top-1/top-5 as mean +- std
over the finished seeds, and the paired difference in top-1 to the row's baseline (runs with the
same seed) with a 95% t-interval over the n paired differences. Unfinished runs are counted in
their row's state column, never dropped. Written as Markdown, CSV and a PNG (top-1 vs parameters,
the paired differences with their intervals, and the runs' training-loss curves from their
TensorBoard event files).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurm.runs import RunLabel, label_of
from slurm.sweep import PLAN_FILE, baseline_point, read_plan, states
from train.errors import BlockmixError
from train.rundir import RunDir

CONFIDENCE = 0.95
MODE_ORDER = (None, "deeper", "compact")
COLUMNS = (
    "model", "variant", "grid", "mixing", "runs", "params", "gflops", "images_per_s",
    "top1_mean", "top1_std", "top5_mean", "top5_std",
    "paired_n", "top1_diff", "top1_diff_low", "top1_diff_high",
)  # fmt: skip


@dataclass(frozen=True)
class RunRecord:
    """One run as the report sees it."""

    name: str
    path: Path
    label: RunLabel
    seed: int
    state: str
    results: dict[str, Any] | None
    params: int | None = None  # planned count, shown until results exist


@dataclass(frozen=True)
class Row:
    label: RunLabel
    runs: tuple[RunRecord, ...]
    reference: RunLabel | None  # the baseline row the paired difference is taken against

    def finished(self) -> list[RunRecord]:
        return [run for run in self.runs if run.results is not None]


def collect(paths: Sequence[str | Path]) -> list[RunRecord]:
    """Runs of one sweep directory (planned runs included) or of the given run directories."""
    dirs = [Path(path) for path in paths]
    if len(dirs) == 1 and (dirs[0] / PLAN_FILE).is_file():
        planned = read_plan(dirs[0])
        current = states(planned, dirs[0])
        return [
            RunRecord(
                run.name,
                dirs[0] / "runs" / run.name,
                RunLabel(run.model, run.variant, run.mode, run.point),
                run.seed,
                current[run.name],
                RunDir(dirs[0] / "runs" / run.name).read_results(),
                run.params,
            )
            for run in planned
        ]
    records = []
    for path in dirs:
        config = RunDir(path).read_config()
        if config is None:
            raise BlockmixError(f"{path}: neither a sweep directory nor a run directory")
        results = RunDir(path).read_results()
        state = "finished" if results is not None else "unfinished"
        records.append(
            RunRecord(path.name, path, label_of(config), config["run"]["seed"], state, results)
        )
    return records


def rows(records: Sequence[RunRecord]) -> list[Row]:
    """Rows in order: per model the baseline, then each mode's narrowed baseline and variant."""
    grouped: dict[RunLabel, list[RunRecord]] = {}
    for record in records:
        grouped.setdefault(record.label, []).append(record)

    def order(label: RunLabel) -> tuple[str, tuple[str, ...], int, bool, tuple[str, ...]]:
        shared = baseline_point(label.point)
        mode = MODE_ORDER.index(label.mode)
        return (label.model, shared, mode, label.variant != "baseline", label.point)

    result = []
    for label in sorted(grouped, key=order):
        reference = None
        if label.variant != "baseline":
            shared = baseline_point(label.point)
            matched = RunLabel(label.model, "baseline", label.mode, shared)
            plain = RunLabel(label.model, "baseline", None, shared)
            reference = matched if matched in grouped else plain if plain in grouped else None
        runs = tuple(sorted(grouped[label], key=lambda run: run.seed))
        result.append(Row(label, runs, reference))
    return result


def paired_difference(
    values: dict[int, float], reference: dict[int, float]
) -> tuple[int, float | None, float | None, float | None]:
    """n, mean and 95% t-interval of ``values[s] - reference[s]`` over seeds in both."""
    from scipy import stats

    seeds = sorted(set(values) & set(reference))
    diffs = [values[seed] - reference[seed] for seed in seeds]
    n = len(diffs)
    if n == 0:
        return 0, None, None, None
    mean = sum(diffs) / n
    if n == 1:
        return 1, mean, None, None
    low, high = stats.ttest_1samp(diffs, 0.0).confidence_interval(CONFIDENCE)
    return n, mean, float(low), float(high)


def table(report_rows: Sequence[Row]) -> list[dict[str, Any]]:
    """One dict per row with `COLUMNS` (None where there is nothing to show yet)."""
    by_label = {row.label: row for row in report_rows}
    out = []
    for row in report_rows:
        done = row.finished()

        def values(key: str, runs: Sequence[RunRecord] = done) -> list[float]:
            return [run.results[key] for run in runs if run.results.get(key) is not None]

        params = values("params") or [run.params for run in row.runs if run.params]
        top1, top5 = values("top1"), values("top5")
        n = diff = low = high = None
        if row.reference is not None:
            ref = {r.seed: r.results["top1"] for r in by_label[row.reference].finished()}
            n, diff, low, high = paired_difference({r.seed: r.results["top1"] for r in done}, ref)
        flops = values("flops")
        out.append(
            {
                "model": row.label.model,
                "variant": row.label.text,
                "grid": " ".join(row.label.point),
                "mixing": _mixing(done) if row.label.variant == "tmix" else "",
                "runs": _run_states(row),
                "params": params[0] if params else None,
                "gflops": flops[0] / 1e9 if flops else None,
                "images_per_s": _mean(values("images_per_s")),
                "top1_mean": _mean(top1),
                "top1_std": _std(top1),
                "top5_mean": _mean(top5),
                "top5_std": _std(top5),
                "paired_n": n,
                "top1_diff": diff,
                "top1_diff_low": low,
                "top1_diff_high": high,
            }
        )
    return out


def markdown(lines: Sequence[dict[str, Any]], task_mean: bool = False) -> str:
    """The table as Markdown; the paired difference is tmix - baseline in top-1 points.
    ``task_mean``: some runs have several tasks, and their accuracy is the mean of the tasks."""
    mean = " (mean of tasks)" if task_mean else ""
    header = (
        f"| model | variant | mixing | runs | params | GFLOPs | images/s | top-1 %{mean} | top-5 %{mean} "
        f"| top-1 diff vs baseline ({CONFIDENCE:.0%} CI) |"
    )
    out = [header, "|" + "---|" * 10]
    for line in lines:
        diff = "-"
        if line["paired_n"]:
            diff = f"{line['top1_diff']:+.2f}"
            if line["top1_diff_low"] is not None:
                diff += f" [{line['top1_diff_low']:+.2f}, {line['top1_diff_high']:+.2f}]"
            diff += f" (n={line['paired_n']})"
        elif line["paired_n"] == 0:
            diff = "no finished pair (n=0)"
        cells = [
            line["model"],
            line["variant"],
            line["mixing"] or "-",
            line["runs"],
            f"{line['params']:,}" if line["params"] else "-",
            f"{line['gflops']:.4g}" if line["gflops"] is not None else "-",
            f"{line['images_per_s']:.0f}" if line["images_per_s"] is not None else "-",
            _pm(line["top1_mean"], line["top1_std"]),
            _pm(line["top5_mean"], line["top5_std"]),
            diff,
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def write_csv(lines: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(lines)


def plot(report_rows: Sequence[Row], lines: Sequence[dict[str, Any]], path: Path) -> None:
    """Write `figure` to ``path``."""
    import matplotlib.pyplot as plt

    fig = figure(report_rows, lines)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def figure(report_rows: Sequence[Row], lines: Sequence[dict[str, Any]]) -> Any:
    """Three panels: top-1 (mean +- std over seeds) against parameters, each baseline and its
    variant drawn a little apart so that both error bars show; the paired top-1 differences to
    the baseline with their t-intervals (the verdict); every run's training loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import ScaledTranslation

    fig, (accuracy, verdict, curves) = plt.subplots(1, 3, figsize=(18, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    differences = []
    for index, (row, line) in enumerate(zip(report_rows, lines, strict=True)):
        colour, name = colours[index % len(colours)], f"{row.label.model} {row.label.text}"
        done = row.finished()
        if done:
            top1, params = [run.results["top1"] for run in done], done[0].results["params"]
            mean, std = _mean(top1), _std(top1) or 0.0
            apart = ScaledTranslation(0.06 if row.reference else -0.06, 0, fig.dpi_scale_trans)
            accuracy.errorbar(
                params, mean, yerr=std, fmt="o", capsize=4, color=colour, label=name,
                transform=accuracy.transData + apart,
            )  # fmt: skip
            accuracy.update_datalim([(params, mean - std), (params, mean + std)])  # not automatic
        if line["paired_n"]:
            differences.append((f"{name} (n={line['paired_n']})", line, colour))
        for number, run in enumerate(row.runs):
            loss = RunDir(run.path).series("train/loss")
            if loss:
                steps, values = zip(*loss, strict=True)
                label = f"{name} ({len(row.runs)} runs)" if number == 0 else None
                curves.plot(steps, values, color=colour, alpha=0.7, label=label)
    for y, (_, line, colour) in enumerate(differences):
        low, high, diff = line["top1_diff_low"], line["top1_diff_high"], line["top1_diff"]
        error = None if low is None else [[diff - low], [high - diff]]
        verdict.errorbar(diff, y, xerr=error, fmt="s", capsize=5, color=colour)
    verdict.axvline(0.0, color="grey", linewidth=1)
    verdict.set_yticks(range(len(differences)), [name for name, _, _ in differences], fontsize=8)
    verdict.set_ylim(-0.5, max(len(differences), 1) - 0.5)
    verdict.set(
        xlabel=f"top-1 difference to its baseline (points, {CONFIDENCE:.0%} t-interval)",
        title="paired difference over seeds",
    )
    accuracy.autoscale_view()
    accuracy.set(xlabel="trainable parameters", ylabel="val top-1 (%)", title="accuracy vs size")
    curves.set(xlabel="step", ylabel="train loss", title="training curves", yscale="log")
    for axes in (accuracy, verdict, curves):
        axes.grid(alpha=0.3)
    for axes in (accuracy, curves):
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    fig.tight_layout()
    return fig


def report(paths: Sequence[str | Path], out: Path) -> str:
    """Collect, write ``out``.md/.csv/.png, and return the Markdown table."""
    report_rows = rows(collect(paths))
    if not report_rows:
        raise BlockmixError("no runs to compare")
    lines = table(report_rows)
    finished = [run.results for row in report_rows for run in row.finished()]
    text = markdown(lines, task_mean=any(len(r.get("tasks", ())) > 1 for r in finished))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    write_csv(lines, out.with_suffix(".csv"))
    plot(report_rows, lines, out.with_suffix(".png"))
    return text


def _mixing(runs: Sequence[RunRecord]) -> str:
    """The method settings the finished runs report (``results.json``), e.g.
    ``softmax identity T=1 lr x1``; ``mixed`` if they differ."""
    texts = set()
    for run in runs:
        mixing = run.results.get("mixing")
        if mixing:
            init = mixing.get("init") or "identity"
            scaled = "" if mixing.get("rescale_templates", True) else " unscaled"
            lr = run.results.get("logits_lr_scale", 1.0)
            texts.add(
                f"{mixing['coefficients']} {init}{scaled} T={mixing['temperature']:g} lr x{lr:g}"
            )
    return texts.pop() if len(texts) == 1 else ("mixed" if texts else "")


def _run_states(row: Row) -> str:
    counts: dict[str, int] = {}
    for run in row.runs:
        counts[run.state] = counts.get(run.state, 0) + 1
    return ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1), None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} +- {std:.2f}" if std is not None else f"{mean:.2f}"
