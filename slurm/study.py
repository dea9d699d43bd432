"""The MNIST study (`make study`): the sweeps behind the paper's three claims, and one report.

`run_study` trains the study's sweeps (`SWEEPS`, files in ``slurm/sweeps/``) through the sweep
machinery (`slurm.sweep`: plan, submit missing or failed runs, states), keeping at most ``jobs``
runs alive at once; a run whose ``transfer.source`` is another run starts once that run has
finished. A rerun re-uses every finished run and trains only what is missing.

`write_report` reads the sweep directories (`slurm.compare.collect`) and writes ``study.md`` and
one figure per claim: (1) matched comparisons on ``mnist`` and ``mnist_m`` and multi-task at equal
parameters and equal FLOPs, (2) transfer to a held-out domain against the trained-parameter
fraction, (3) unsupervised adaptation against source-only and BN re-estimation alone. Paired
differences are per seed, with 95% t-intervals (`slurm.compare.paired_difference`) and two-sided
paired t-test p-values. With ``--readme`` the report also replaces the text between
`README_BEGIN` and `README_END` in that file.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurm.compare import CONFIDENCE, RunRecord, collect, paired_difference, rows
from slurm.sweep import PLAN_FILE, Plan, PlannedRun, load_sweep, make_plan, states, submit_plan
from train.errors import BlockmixError
from train.rundir import RunDir

SWEEP_DIR = Path(__file__).parent / "sweeps"
MATCHED = "mnist_matched"
MULTITASK = ("mnist_multitask", "mnist_multitask_baseline", "mnist_multitask_baseline_flops")
TRANSFER = "mnist_transfer"
ADAPT, ADAPT_BN = "mnist_adapt", "mnist_adapt_bn"
SWEEPS = (*MULTITASK, MATCHED, TRANSFER, ADAPT_BN, ADAPT)  # the order runs are started in
README_BEGIN = "<!-- mnist-study:begin (written by python -m slurm.study) -->"
README_END = "<!-- mnist-study:end -->"
ALIVE = ("pending", "running")
TODO = ("missing", "failed")


@dataclass(frozen=True)
class Paired:
    """``values - reference`` over the seeds in both: n, mean, 95% interval, p-value."""

    n: int
    mean: float | None
    low: float | None
    high: float | None
    p: float | None

    def text(self) -> str:
        if not self.n:
            return "-"
        out = f"{self.mean:+.2f}"
        if self.low is not None:
            out += f" [{self.low:+.2f}, {self.high:+.2f}]"
        return out + f" (n={self.n})"

    def p_text(self) -> str:
        return "-" if self.p is None else f"{self.p:.3f}" if self.p >= 0.001 else "<0.001"


def paired(values: dict[int, float], reference: dict[int, float]) -> Paired:
    """`slurm.compare.paired_difference` plus the paired t-test's two-sided p-value."""
    from scipy import stats

    n, mean, low, high = paired_difference(values, reference)
    p = None
    if n >= 2:
        diffs = [values[seed] - reference[seed] for seed in sorted(set(values) & set(reference))]
        if any(diff != diffs[0] for diff in diffs):
            p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
        else:  # no spread: p is 0 for a nonzero difference, 1 for none
            p = 1.0 if diffs[0] == 0 else 0.0
    return Paired(n, mean, low, high, p)


# --- running -------------------------------------------------------------------------------


def plans(executor: str | None, names: Sequence[str] = SWEEPS) -> list[Plan]:
    """The study's sweep plans, in `SWEEPS` order."""
    return [make_plan(load_sweep(SWEEP_DIR / f"{name}.yaml"), executor) for name in names]


def transfers(plan: Plan) -> bool:
    """Whether any run of the plan may have a ``transfer.source`` (one config load)."""
    from train.config import load_config

    in_grid = any(key == "transfer.source" for key, _ in plan.spec.grid)
    return in_grid or bool(load_config(plan.spec.config, plan.spec.overrides).transfer.source)


def transfer_source(plan: Plan, run: PlannedRun) -> RunDir | None:
    """The run directory a planned run transfers from (``transfer.source``), or None."""
    from train.config import load_config

    run_dir = f"run.dir={plan.sweep_dir / 'runs' / run.name}"
    source = load_config(plan.spec.config, [*run.overrides, run_dir]).transfer.source
    return RunDir(source) if source and Path(source).suffix != ".safetensors" else None


def run_study(executor: str | None, jobs: int, poll_s: float = 10.0) -> list[str]:
    """Train every missing or failed run of the study, at most ``jobs`` alive at once; returns
    the runs that did not finish (each failed at most once in this call)."""
    all_plans = plans(executor)
    tried: set[tuple[str, str]] = set()
    sources = {
        (plan.spec.name, run.name): transfer_source(plan, run) if transfers(plan) else None
        for plan in all_plans
        for run in plan.runs
    }
    shown = ""
    while True:
        current = {plan.spec.name: states(plan.runs, plan.sweep_dir) for plan in all_plans}
        alive = sum(state in ALIVE for now in current.values() for state in now.values())
        waiting, start = 0, []
        for plan in all_plans:
            for run in plan.runs:
                key = (plan.spec.name, run.name)
                if current[plan.spec.name][run.name] not in TODO or key in tried:
                    continue
                if sources[key] is None or sources[key].finished:
                    start.append((plan, run.name))
                else:
                    waiting += 1
        done = sum(state == "finished" for now in current.values() for state in now.values())
        total = sum(len(now) for now in current.values())
        line = f"study: {done}/{total} finished, {alive} running, {waiting} waiting"
        if line != shown:
            print(line, flush=True)
            shown = line
        if not alive and not start:
            break
        for plan, name in start[: max(jobs - alive, 0)]:
            submit_plan(plan, only={name})
            tried.add((plan.spec.name, name))
        time.sleep(poll_s)
    return [
        f"{plan.spec.name}/{run}: {state}"
        for plan in all_plans
        for run, state in states(plan.runs, plan.sweep_dir).items()
        if state != "finished"
    ]


# --- reading -------------------------------------------------------------------------------


def sweep_records(sweeps: Path, name: str) -> list[RunRecord]:
    """The runs of sweep ``name`` under ``sweeps`` (none if it was never submitted)."""
    path = sweeps / name
    return collect([path]) if (path / PLAN_FILE).is_file() else []


def point_of(record: RunRecord) -> dict[str, str]:
    """A run's grid point as {short key: value} (``adapt.loss=moment`` -> {"loss": "moment"})."""
    out = {}
    for item in record.label.point:
        key, _, value = item.partition("=")
        out[key.rsplit(".", 1)[-1]] = value
    return out


def by_seed(records: Sequence[RunRecord], key: str = "top1") -> dict[int, float]:
    return {r.seed: r.results[key] for r in records if r.results and r.results.get(key) is not None}


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.2f} +- {std:.2f}"


def _count(records: Sequence[RunRecord]) -> str:
    finished = sum(r.results is not None for r in records)
    return f"{finished}/{len(records)}"


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*out, *("| " + " | ".join(line) + " |" for line in lines)])


def _first(records: Sequence[RunRecord], key: str) -> Any:
    return next((r.results[key] for r in records if r.results and key in r.results), None)


# --- claim 1: matched comparison and multi-task ---------------------------------------------


def matched_section(records: Sequence[RunRecord]) -> tuple[str, list[dict[str, Any]]]:
    """Per domain: each baseline and matched variant; variants paired with their baseline."""
    if not records:
        return "Not run yet.", []
    report_rows = rows(records)
    by_label = {row.label: row for row in report_rows}
    lines, points = [], []
    for row in report_rows:
        done = row.finished()
        domain = Path(point_of(row.runs[0]).get("root", "-")).name
        test = Paired(0, None, None, None, None)
        if row.reference is not None and row.reference in by_label:
            test = paired(by_seed(done), by_seed(by_label[row.reference].finished()))
            points.append(
                {"domain": domain, "variant": row.label.text.split(" [")[0], "test": test}
            )
        flops = _first(done, "flops")
        lines.append(
            [
                domain,
                row.label.text.split(" [")[0],
                _count(row.runs),
                f"{_first(done, 'params') or row.runs[0].params:,}",
                f"{flops / 1e6:.2f}" if flops else "-",
                _mean_std([r.results["top1"] for r in done]),
                test.text() if row.reference else "-",
                test.p_text() if row.reference else "-",
            ]
        )
    header = ("domain", "variant", "runs", "params", "MFLOPs", "top-1 %", "diff vs baseline", "p")
    return _table(header, lines), points


def multitask_section(groups: dict[str, list[RunRecord]]) -> tuple[str, list[dict[str, Any]]]:
    """The shared bank against independent baselines at equal parameters and equal FLOPs."""
    tmix = groups.get(MULTITASK[0], [])
    if not any(groups.values()):
        return "Not run yet.", []
    tasks = next((list(r.results["tasks"]) for rs in groups.values() for r in rs if r.results), [])
    names = {
        MULTITASK[0]: "shared bank (tmix)",
        MULTITASK[1]: "independent, equal params",
        MULTITASK[2]: "independent, equal FLOPs",
    }
    lines, bars = [], []
    for name in MULTITASK:
        records = groups.get(name, [])
        done = [r for r in records if r.results]
        test = paired(by_seed(tmix), by_seed(done)) if name != MULTITASK[0] else None
        flops = _first(done, "flops")
        params = _first(done, "params")
        per_task = [_mean_std([r.results["tasks"][t]["top1"] for r in done]) for t in tasks]
        lines.append(
            [
                names[name],
                _count(records),
                f"{params:,}" if params else "-",
                f"{flops / 1e6:.2f}" if flops else "-",
                *per_task,
                _mean_std([r.results["top1"] for r in done]),
                test.text() if test else "-",
                test.p_text() if test else "-",
            ]
        )
        bars.append({"name": names[name], "values": [r.results["top1"] for r in done]})
    header = (
        "model", "runs", "params", "MFLOPs/image", *tasks, "mean top-1 %",
        "tmix minus this", "p",
    )  # fmt: skip
    return _table(header, lines), bars


# --- claim 2: transfer ------------------------------------------------------------------------

MODE_ORDER = ("m", "h", "hm", "b", "bm", "hb", "hbm", "all")


def transfer_section(records: Sequence[RunRecord]) -> tuple[str, list[dict[str, Any]]]:
    """Per transfer mode: trained parameters and their fraction, top-1, difference to ``all``."""
    if not records:
        return "Not run yet.", []
    modes: dict[str, list[RunRecord]] = {}
    for record in records:
        modes.setdefault(point_of(record).get("mode", "?"), []).append(record)
    ordered = sorted(modes, key=lambda m: MODE_ORDER.index(m) if m in MODE_ORDER else 99)
    full = by_seed(modes.get("all", []))
    lines, points = [], []
    for mode in ordered:
        done = [r for r in modes[mode] if r.results]
        trained, total = _first(done, "trained_params"), _first(done, "total_params")
        fraction = trained / total if trained and total else None
        test = paired(by_seed(done), full) if mode != "all" else None
        lines.append(
            [
                f"`{mode}`",
                _count(modes[mode]),
                f"{trained:,}" if trained else "-",
                f"{100 * fraction:.2f}" if fraction else "-",
                _mean_std([r.results["top1"] for r in done]),
                test.text() if test else "-",
                test.p_text() if test else "-",
            ]
        )
        if fraction:
            points.append({"mode": mode, "fraction": fraction, "values": by_seed(done)})
    header = ("mode", "runs", "trained params", "% of params", "top-1 %", "diff vs all", "p")
    return _table(header, lines), points


# --- claim 3: adaptation ----------------------------------------------------------------------


def adapt_section(
    records: Sequence[RunRecord], controls: Sequence[RunRecord]
) -> tuple[str, list[dict[str, Any]]]:
    """Per target: source-only (before adapting), BN re-estimation alone (``adapt.weight=0``)
    and each loss, paired per seed against both controls."""
    if not records and not controls:
        return "Not run yet.", []
    targets = sorted({point_of(r)["target"] for r in [*records, *controls]})
    lines, groups = [], []
    for target in targets:
        runs = [r for r in records if point_of(r)["target"] == target]
        bn = [r for r in controls if point_of(r)["target"] == target]
        before = by_seed([*bn, *runs], "target_top1_before")
        bn_after = by_seed(bn, "target_top1_after")
        arms = [
            ("source only", before, None, None),
            ("BN re-estimation alone", bn_after, None, None),
        ]
        for loss in ("moment", "adversarial", "discrepancy"):
            chosen = [r for r in runs if point_of(r).get("loss") == loss]
            values = by_seed(chosen, "target_top1_after")
            arms.append((loss, values, paired(values, bn_after), paired(values, before)))
        for name, values, vs_bn, vs_source in arms:
            lines.append(
                [
                    target,
                    name,
                    str(len(values)),
                    _mean_std(list(values.values())),
                    vs_bn.text() if vs_bn else "-",
                    vs_bn.p_text() if vs_bn else "-",
                    vs_source.text() if vs_source else "-",
                ]
            )
        groups.append({"target": target, "arms": [(name, values) for name, values, *_ in arms]})
    header = (
        "target",
        "method",
        "seeds",
        "target top-1 %",
        "diff vs BN alone",
        "p",
        "diff vs source only",
    )
    return _table(header, lines), groups


# --- figures ----------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_claim1(matched: list[dict[str, Any]], bars: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for index, point in enumerate(matched):
        test: Paired = point["test"]
        if test.mean is None:
            continue
        err = None if test.low is None else [[test.mean - test.low], [test.high - test.mean]]
        left.errorbar(index, test.mean, yerr=err, fmt="o", capsize=4)
    left.axhline(0.0, color="grey", lw=1)
    left.set_xticks(range(len(matched)), [f"{p['domain']}\n{p['variant']}" for p in matched])
    left.set(ylabel="top-1 diff vs matched baseline (points)", title="matched pairs (95% CI)")
    for index, bar in enumerate(bars):
        values = bar["values"]
        if values:
            right.bar(index, sum(values) / len(values), color="C0", alpha=0.5)
            right.plot([index] * len(values), values, "k.", ms=6)
    right.set_xticks(range(len(bars)), [b["name"].replace(", ", "\n") for b in bars])
    right.set(ylabel="mean top-1 over 4 tasks (%)", title="multi-task (bars: mean; dots: seeds)")
    _save(plt, figure, path)


def plot_claim2(points: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for point in points:
        values = list(point["values"].values())
        axes.plot([point["fraction"]] * len(values), values, ".", color="grey")
        axes.plot(point["fraction"], sum(values) / len(values), "o", label=f"mode {point['mode']}")
    axes.set(
        xscale="log", xlabel="trained fraction of parameters", ylabel="held-out top-1 (%)",
        title="transfer to mnist_m (dots: seeds)",
    )  # fmt: skip
    if points:
        axes.legend(fontsize=8)
    _save(plt, figure, path)


def plot_claim3(groups: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    figure, panels = plt.subplots(1, max(len(groups), 1), figsize=(5.5 * max(len(groups), 1), 4))
    panels = panels if hasattr(panels, "__len__") else [panels]
    for axes, group in zip(panels, groups, strict=False):
        for index, (_, values) in enumerate(group["arms"]):
            seeds = list(values.values())
            if seeds:
                axes.bar(index, sum(seeds) / len(seeds), color="C1", alpha=0.5)
                axes.plot([index] * len(seeds), seeds, "k.", ms=6)
        names = [name.replace(" ", "\n", 1) for name, _ in group["arms"]]
        axes.set_xticks(range(len(names)), names, fontsize=8)
        axes.set(ylabel="target top-1 (%)", title=f"adaptation to {group['target']}")
    _save(plt, figure, path)


def _save(plt: Any, figure: Any, path: Path) -> None:
    for axes in figure.axes:
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# --- the report -------------------------------------------------------------------------------


def setup_section(names: Sequence[str] = SWEEPS) -> str:
    """What each sweep of the study trains: config, seeds, grid and overrides (from its file)."""
    quiet = ("train.progress", "checkpoint.every")
    lines = []
    for name in names:
        spec = load_sweep(SWEEP_DIR / f"{name}.yaml")
        grid = "; ".join(f"{key}: {', '.join(values)}" for key, values in spec.grid)
        kept = [item for item in spec.overrides if item.partition("=")[0] not in quiet]
        lines.append(
            [
                f"`{name}`",
                f"`{spec.config}`",
                ", ".join(map(str, spec.seeds)),
                ", ".join(spec.modes) or "-",
                grid or "-",
                " ".join(f"`{item}`" for item in kept) or "-",
            ]
        )
    return _table(("sweep", "config", "seeds", "matched modes", "grid", "overrides"), lines)


def write_report(sweeps: Path, out: Path) -> str:
    """Write ``out/study.md`` and ``out/claim{1,2,3}.png`` from the study's sweep directories
    under ``sweeps``; return the Markdown."""
    records = {name: sweep_records(sweeps, name) for name in SWEEPS}
    if not any(records.values()):
        raise BlockmixError(f"{sweeps}: none of the study's sweeps ({', '.join(SWEEPS)}) has run")
    out.mkdir(parents=True, exist_ok=True)
    matched, matched_points = matched_section(records[MATCHED])
    multitask, bars = multitask_section({name: records[name] for name in MULTITASK})
    transfer, transfer_points = transfer_section(records[TRANSFER])
    adapt, adapt_groups = adapt_section(records[ADAPT], records[ADAPT_BN])
    plot_claim1(matched_points, bars, out / "claim1.png")
    plot_claim2(transfer_points, out / "claim2.png")
    plot_claim3(adapt_groups, out / "claim3.png")
    finished = sum(r.results is not None for rs in records.values() for r in rs)
    total = sum(len(rs) for rs in records.values())
    ci = f"{CONFIDENCE:.0%}"
    text = f"""{setup_section()}

Runs finished: {finished} of {total}. Top-1 in %, mean +- sample std over seeds;
differences are paired per seed (first minus second, in points) with their {ci} t-interval and
the paired t-test's two-sided p-value.

**Claim 1a: matched comparison** (`{MATCHED}`): baseline vs template variants at equal
parameters (`deeper`: twice the positions from a bank; `compact`: against the narrowed
baseline).

{matched}

**Claim 1b: multi-task** (`{"`, `".join(MULTITASK)}`): one shared bank vs four independent
baselines at equal total parameters and at equal FLOPs per image.

{multitask}

![claim 1]({out}/claim1.png)

**Claim 2: transfer to a held-out domain** (`{TRANSFER}`): mnist_m learned from the bank of
the multi-task run of the same seed; what trains is the mode's parameters only.

{transfer}

![claim 2]({out}/claim2.png)

**Claim 3: unsupervised adaptation** (`{ADAPT}`, `{ADAPT_BN}`): the target task's mixture
logits adapt without labels; source only is the target's top-1 before adapting, BN alone
re-estimates the target's BN statistics with the loss weighted 0.

{adapt}

![claim 3]({out}/claim3.png)
"""
    (out / "study.md").write_text(text)
    return text


def update_readme(readme: Path, text: str) -> None:
    """Replace the text between `README_BEGIN` and `README_END` in ``readme`` with ``text``."""
    content = readme.read_text()
    start, end = content.find(README_BEGIN), content.find(README_END)
    if start < 0 or end < start:
        raise BlockmixError(f"{readme}: no {README_BEGIN} ... {README_END} section to replace")
    head = content[: start + len(README_BEGIN)]
    readme.write_text(f"{head}\n{text}{content[end:]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slurm.study", description="Run the MNIST study and write its report."
    )
    parser.add_argument("--cluster", dest="executor", choices=("local", "slurm", "debug"))
    parser.add_argument("--jobs", type=int, default=4, help="runs alive at once (default 4)")
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    parser.add_argument(
        "--sweeps",
        type=Path,
        help="the sweeps' parent folder (default runs/sweeps, under run_root)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/mnist_study"))
    parser.add_argument("--readme", type=Path, help="also replace the study section of this file")
    args = parser.parse_args(argv)
    try:
        if args.jobs < 1:
            raise BlockmixError(f"--jobs must be >= 1, got {args.jobs}")
        left = [] if args.report_only else run_study(args.executor, args.jobs)
        from slurm.cluster import load_cluster_config

        sweeps = args.sweeps or load_cluster_config().resolve("runs/sweeps")
        text = write_report(sweeps, args.out)
        if args.readme:
            update_readme(args.readme, text)
    except BlockmixError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text)
    for line in left:
        print(f"not finished: {line}", file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
