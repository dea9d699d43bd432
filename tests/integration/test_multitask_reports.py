"""`blockmix status` and `blockmix compare` on a real sweep of multi-task runs (two demo domains):
both show the task-mean metric and the runs' loss curves; results.json has the one schema."""

from __future__ import annotations

import csv
import json

import pytest

from train.cli import main
from train.rundir import RunDir

TASKS = ("digits", "inverted")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory):
    from data_pipeline.prepare.demo import prepare_demo

    root = tmp_path_factory.mktemp("multitask-sweep")
    prepare_demo(root / "demo", workers=1)
    tasks = ", ".join(f"{{name: {name}, root: {name}}}" for name in TASKS)
    (root / "mt.yaml").write_text(f"_base_: demo\ntasks: [{tasks}]\n")
    sweep_file = root / "mt-sweep.yaml"
    sweep_file.write_text(
        f"config: {root / 'mt.yaml'}\nmodes: [deeper]\nseeds: [0]\ndir: {root / 'sweep'}\n"
        "cluster: {executor: local, time_min: 10}\n"
        f"overrides:\n  data.root: {root / 'demo'}\n  train.progress: false\n"
        "  train.steps: 4\n  train.epochs: 0\n  train.log_every: 2\n  data.batch_size: 16\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv("BLOCKMIX_CLUSTER_CONFIG", str(root / "no-cluster.yaml"))
        (root / "no-cluster.yaml").write_text(f"run_root: {root}\n")
        assert main(["sweep", str(sweep_file), "--wait"]) == 0
    return root / "sweep"


def test_results_hold_the_task_mean_and_every_task(sweep_dir) -> None:
    for run in sorted((sweep_dir / "runs").iterdir()):
        results = RunDir(run).read_results()
        assert set(results["tasks"]) == set(TASKS)
        for key, name in (("top1", "top1"), ("top5", "top5"), ("val_loss", "val_loss")):
            mean = sum(task[name] for task in results["tasks"].values()) / len(TASKS)
            assert results[key] == pytest.approx(mean)
        alphas = json.loads((run / "alpha.json").read_text())  # a baseline has no bank
        assert {a["task"] for a in alphas} == ({0, 1} if results["variant"] == "tmix" else set())


def test_status_shows_each_multitask_runs_mean_metric(sweep_dir, capsys) -> None:
    assert main(["status", str(sweep_dir)]) == 0
    header, *lines, counts = capsys.readouterr().out.strip().splitlines()
    assert "mean of tasks" in header
    assert len(lines) == 2 and counts == "2 finished"
    for line in lines:
        name = line.split()[0]
        top1 = RunDir(sweep_dir / "runs" / name).read_results()["top1"]
        assert f"val/top1={top1:.4g} @4 (mean of 2 tasks)" in line


def test_compare_reports_the_mean_and_draws_the_loss_curves(sweep_dir, capsys) -> None:
    assert main(["compare", str(sweep_dir)]) == 0
    assert "(mean of tasks)" in capsys.readouterr().out
    lines = {line["variant"]: line for line in csv.DictReader((sweep_dir / "compare.csv").open())}
    for name, variant in (
        ("isometric-baseline-s0", "baseline"),
        ("isometric-tmix-deeper-s0", "tmix deeper"),
    ):
        run = RunDir(sweep_dir / "runs" / name)
        assert float(lines[variant]["top1_mean"]) == pytest.approx(run.read_results()["top1"])
        scalars = run.scalars()
        curve = run.series("train/loss")
        assert [step for step, _ in curve] == [2, 4]
        per_task = [dict(scalars[f"train/{task}/loss"]) for task in TASKS]
        for step, value in curve:
            assert value == pytest.approx(sum(points[step] for points in per_task) / len(TASKS))
