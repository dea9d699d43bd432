"""The MNIST study's report (slurm/study.py) on run directories of real tiny demo trainings
(tests/unit/sweep_fixture.py), copied into the study's sweep layout with the fields each claim
reads; and the study runner's wait for a transfer source."""

import json
import shutil
from pathlib import Path

import pytest
from scipy import stats

from slurm import study
from slurm.sweep import load_sweep, make_plan
from train.errors import BlockmixError

TOP1 = {0: 80.0, 1: 84.0}  # per seed, written over the real runs' top-1


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _fabricate(sweeps: Path, source: Path, name: str, runs: list[tuple[str, int, tuple, dict]]):
    """Sweep ``name`` under ``sweeps``: each (run name, seed, grid point, results changes) is a
    copy of the real run of that seed in ``source`` with its results.json changed."""
    planned = []
    for run_name, seed, point, changes in runs:
        real = source / "runs" / f"isometric-baseline-s{seed}"
        target = sweeps / name / "runs" / run_name
        shutil.copytree(real, target)
        (target / "results.json").write_text(json.dumps({**_results(real), **changes}))
        planned.append(
            {"name": run_name, "model": "isometric", "variant": "tmix", "mode": None,
             "seed": seed, "overrides": [], "params": 1, "point": list(point)}
        )  # fmt: skip
    (sweeps / name / "plan.json").write_text(json.dumps({"runs": planned}))


def test_paired_matches_the_paired_t_test():
    values, reference = {0: 1.0, 1: 3.0, 2: 2.5, 5: 9.0}, {0: 0.5, 1: 1.0, 2: 2.0}
    test = study.paired(values, reference)
    expected = stats.ttest_rel([1.0, 3.0, 2.5], [0.5, 1.0, 2.0])
    assert test.n == 3 and test.mean == pytest.approx(1.0)
    assert test.p == pytest.approx(expected.pvalue)
    assert test.low < test.mean < test.high
    assert study.paired({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0}).p == 0.0  # no spread, nonzero
    assert study.paired({0: 2.0}, {0: 1.0}).p is None


def test_report_of_every_claim(real_sweep, tmp_path):
    sweeps, real = tmp_path / "sweeps", real_sweep.sweep_dir
    shutil.copytree(real, sweeps / study.MATCHED)
    mt = [(f"mt-s{s}", s, (), {"top1": TOP1[s]}) for s in (0, 1)]
    _fabricate(sweeps, real, study.MULTITASK[0], mt)
    _fabricate(
        sweeps, real, study.MULTITASK[1], [(f"b-s{s}", s, (), {"top1": 70.0}) for s in (0, 1)]
    )
    modes = {"m": (40, 50.0), "all": (1000, 60.0)}
    transfer = [
        (f"t-{mode}-s{s}", s, (f"transfer.mode={mode}",),
         {"top1": top1 + s, "trained_params": trained, "total_params": 1000})
        for mode, (trained, top1) in modes.items() for s in (0, 1)
    ]  # fmt: skip
    _fabricate(sweeps, real, study.TRANSFER, transfer)
    adapt = [
        (f"a-{loss}-s{s}", s, ("adapt.target=mnist_m", f"adapt.loss={loss}"),
         {"target_top1_before": 10.0 + s, "target_top1_after": after + s})
        for loss, after in (("moment", 14.0), ("adversarial", 12.0), ("discrepancy", 9.0))
        for s in (0, 1)
    ]  # fmt: skip
    _fabricate(sweeps, real, study.ADAPT, adapt)
    bn = [
        (f"bn-s{s}", s, ("adapt.target=mnist_m",),
         {"target_top1_before": 10.0 + s, "target_top1_after": 13.0 + 2 * s})
        for s in (0, 1)
    ]  # fmt: skip
    _fabricate(sweeps, real, study.ADAPT_BN, bn)

    text = study.write_report(sweeps, tmp_path / "out")
    assert (tmp_path / "out" / "study.md").read_text() == text
    for claim in (1, 2, 3):
        assert (tmp_path / "out" / f"claim{claim}.png").stat().st_size > 1000
    assert "Runs finished: 20 of 20." in text
    # Claim 1a: the real runs, paired per seed.
    base = {s: _results(real / "runs" / f"isometric-baseline-s{s}")["top1"] for s in (0, 1)}
    deeper = {s: _results(real / "runs" / f"isometric-tmix-deeper-s{s}")["top1"] for s in (0, 1)}
    expected = study.paired(deeper, base)
    assert "| - | tmix deeper | 2/2 | 24,426 |" in text
    assert f"| {expected.text()} | {expected.p_text()} |" in text
    # Claim 1b: tmix minus the equal-parameter baselines; the FLOPs sweep never ran.
    assert "| independent, equal params | 2/2 |" in text
    assert "| 82.00 +- 2.83 | -" in text and "+12.00 [" in text
    assert "| independent, equal FLOPs | 0/0 |" in text
    # Claim 2: fraction of parameters trained, difference to `all` (constant: p = 0).
    assert "| `m` | 2/2 | 40 | 4.00 | 50.50 +- 0.71 | -10.00 [" in text
    # Claim 3: controls from the before/after of the runs; moment beats BN alone by 0.5 on average.
    assert "| mnist_m | source only | 2 | 10.50 +- 0.71 |" in text
    assert "| mnist_m | BN re-estimation alone | 2 | 14.00 +- 1.41 |" in text
    assert "| mnist_m | moment | 2 | 14.50 +- 0.71 | +0.50 [" in text
    assert "| +4.00 [" in text  # moment vs source only, no spread: an interval of zero width


def test_report_needs_a_sweep_and_readme_markers(tmp_path):
    with pytest.raises(BlockmixError, match="none of the study's sweeps"):
        study.write_report(tmp_path, tmp_path / "out")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{study.README_BEGIN}\nold\n{study.README_END}\ntail\n")
    study.update_readme(readme, "new report\n")
    assert (
        readme.read_text() == f"# x\n{study.README_BEGIN}\nnew report\n{study.README_END}\ntail\n"
    )
    readme.write_text("# no markers\n")
    with pytest.raises(BlockmixError, match="no <!-- mnist-study:begin"):
        study.update_readme(readme, "x")


def test_transfer_runs_wait_for_their_source(tmp_path):
    sweep = tmp_path / "transfer.yaml"
    sweep.write_text(
        "config: mnist_transfer\nmodes: []\nseeds: [0, 1]\ngrid: {transfer.mode: [m, all]}\n"
        f"dir: {tmp_path / 'sw'}\noverrides: {{transfer.source: '{tmp_path}/src-s${{run.seed}}'}}\n"
    )
    plan = make_plan(load_sweep(sweep))
    assert [run.name for run in plan.runs] == [
        "isometric-tmix-mode=m-s0", "isometric-tmix-mode=m-s1",
        "isometric-tmix-mode=all-s0", "isometric-tmix-mode=all-s1",
    ]  # fmt: skip
    assert all(run.variant == "tmix" and run.mode is None for run in plan.runs)
    assert study.transfers(plan)
    assert not study.transfers(make_plan(load_sweep(study.SWEEP_DIR / "mnist_adapt.yaml")))
    sources = [study.transfer_source(plan, run) for run in plan.runs]
    assert [source.path for source in sources] == [tmp_path / f"src-s{s}" for s in (0, 1, 0, 1)]
    assert not any(source.finished for source in sources)
    (tmp_path / "src-s1").mkdir()
    (tmp_path / "src-s1" / "results.json").write_text("{}")
    assert [source.finished for source in sources] == [False, True, False, True]
