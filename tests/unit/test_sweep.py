"""slurm.sweep: sweep files, the plan, run states and resubmitting only what is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from sweep_fixture import write_sweep

from slurm.sweep import describe_plan, load_sweep, make_plan, read_jobs, run_state, states
from train.cli import main
from train.config import load_config
from train.errors import BlockmixError
from train.models import match, model_config

DEMO_MODEL = dict(num_classes=10, width=32, expansion=2, blocks=4, patch_size=4, head_width=64)


@pytest.fixture(autouse=True)
def no_user_cluster(tmp_path, monkeypatch):
    (tmp_path / "cluster.yaml").write_text(f"run_root: {tmp_path}\n")
    monkeypatch.setenv("BLOCKMIX_CLUSTER_CONFIG", str(tmp_path / "cluster.yaml"))


def sweep_file(tmp_path, text: str):
    path = tmp_path / "s.yaml"
    if "overrides" not in text:
        text += "overrides: {data.root: data/demo}\n"
    path.write_text("config: demo\nmodes: [deeper]\nseeds: [0]\n" + text)
    return path


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("colour: red\n", "unknown field(s) colour"),
        ("modes: [wider]\n", "modes: 'wider'"),
        ("seeds: [1, 1]\n", "seeds lists a seed twice"),
        ("seeds: [-1]\n", "seeds must be"),
        ("models: [resnet7]\n", "models: unknown model 'resnet7'"),
        ("overrides: {run.seed: 3}\n", "overrides: run.seed is set by the sweep"),
        ("overrides: [a=1]\n", "overrides must be a mapping"),
        ("resources: {nodes: 0}\n", "resources.nodes must be an integer >= 1"),
        ("resources: {cpus: 4}\n", "resources must be a mapping with fields"),
        ("cluster: {executor: cloud}\n", "cluster: executor 'cloud'"),
        ("cluster: {partition: 'gpu;rm'}\n", "cluster: partition"),
        ("cluster: {queue: a}\n", "cluster: unknown field(s) queue"),
        ("cluster: {time_min: ten}\n", "cluster.time_min must be a int"),
        ("grid: [a]\n", "grid must be a mapping"),
        ("grid: {model.mixing.init: identity}\n", "grid.model.mixing.init must be a non-empty"),
        ("grid: {optim.lr: [0.1, 0.1]}\n", "grid.optim.lr lists a value twice"),
        ("grid: {run.seed: [1, 2]}\n", "grid: run.seed is set by the sweep"),
    ],
)
def test_bad_sweep_files_name_the_field(tmp_path, text, field):
    # later keys replace the defaults written first
    with pytest.raises(BlockmixError, match=r"sweep file .*s\.yaml") as error:
        load_sweep(sweep_file(tmp_path, text))
    assert field in str(error.value)
    assert "\n" not in str(error.value)


def test_a_bad_override_fails_at_plan_time(tmp_path):
    spec = load_sweep(sweep_file(tmp_path, "overrides: {data.root: d, train.stepz: 3}\n"))
    with pytest.raises(BlockmixError, match=r"train\.stepz"):
        make_plan(spec)


def test_plan_pairs_every_seed_with_the_matched_variants_as_blockmix_params_counts(tmp_path):
    path = sweep_file(tmp_path, "modes: [deeper, compact]\nseeds: [0, 3]\ndir: sw\n")
    plan = make_plan(load_sweep(path), executor="debug")
    assert plan.sweep_dir == tmp_path / "sw"
    assert plan.cluster.executor == "debug"
    names = [run.name for run in plan.runs]
    per_seed = ["baseline", "tmix-deeper", "baseline-compact", "tmix-compact"]
    assert names == [f"isometric-{n}-s{s}" for s in (0, 3) for n in per_seed]
    assert list(plan.groups()) == [("isometric", 0), ("isometric", 3)]
    registered = model_config("isometric", **DEMO_MODEL)
    for pairing in plan.pairings:
        pair = match(registered, pairing.mode)
        assert (pairing.baseline_params, pairing.tmix_params) == (
            pair.baseline_params,
            pair.tmix_params,
        )
    narrowed = next(run for run in plan.runs if run.name == "isometric-baseline-compact-s0")
    compact = match(registered, "compact").baseline
    assert f"model.options.width_multiplier={compact.width_multiplier}" in narrowed.overrides
    assert "run.seed=0" in narrowed.overrides and "model.variant=baseline" in narrowed.overrides


def test_dry_run_prints_the_plan_and_submits_nothing(tmp_path, capsys):
    path = sweep_file(tmp_path, "dir: dry\n")
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "isometric-baseline-s0" in out and "isometric-tmix-deeper-s0" in out
    assert "2 of 2 runs to submit in 1 job array(s)" in out
    assert "1 node(s) x 1 task(s)" in out
    assert not (tmp_path / "dry").exists()


def test_run_states_from_results_and_the_recorded_job(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert run_state(run, None) == "missing"
    ended = subprocess.Popen(["true"])
    ended.wait()
    assert run_state(run, {"executor": "local", "job_id": str(ended.pid)}) == "failed"
    assert run_state(run, {"executor": "local", "job_id": str(os.getpid())}) == "running"
    assert run_state(run, {"executor": "debug", "job_id": "1"}) == "failed"
    (run / "results.json").write_text("{}")
    assert run_state(run, {"executor": "local", "job_id": str(os.getpid())}) == "finished"


def test_failed_runs_are_planned_for_resubmission(real_sweep, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(real_sweep.sweep_dir, copy)
    victim = "isometric-tmix-deeper-s1"
    (copy / "runs" / victim / "results.json").unlink()  # its job has ended: a failed run
    plan = make_plan(load_sweep(write_sweep(tmp_path / "c.yaml", real_sweep.data, copy, "[0, 1]")))
    current = states(plan.runs, copy)
    assert current.pop(victim) == "failed"
    assert set(current.values()) == {"finished"}
    text = describe_plan(plan, states(plan.runs, copy))
    assert "1 of 4 runs to submit in 1 job array(s)" in text


def test_running_again_submits_only_missing_runs(real_sweep, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(real_sweep.sweep_dir, copy)
    before = read_jobs(copy)
    file = write_sweep(tmp_path / "more.yaml", real_sweep.data, copy, "[0, 1, 2]")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["sweep", str(file), "--wait"]) == 0
    assert "2 of 6 runs to submit in 1 job array(s)" in capsys.readouterr().out
    after = read_jobs(copy)
    assert {name: after[name] for name in before} == before
    assert sorted(set(after) - set(before)) == ["isometric-baseline-s2", "isometric-tmix-deeper-s2"]
    assert set(states(make_plan(load_sweep(file)).runs, copy).values()) == {"finished"}
    plan = json.loads((copy / "plan.json").read_text())["runs"]
    assert len(plan) == 6


def test_status_shows_state_step_and_metric(real_sweep, capsys):
    assert main(["status", str(real_sweep.sweep_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "4 finished"
    baseline = next(line for line in lines if line.startswith("isometric-baseline-s0"))
    assert baseline.split()[1:3] == ["finished", "8"]
    assert "val/top1=" in baseline and "@8" in baseline


def test_status_of_a_folder_that_is_no_sweep(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "no plan.json" in capsys.readouterr().err


GRID = "grid: {model.mixing.init: [uniform, identity], optim.logits_lr_scale: [1, 10]}\n"


def test_a_grid_multiplies_only_the_runs_it_concerns(tmp_path):
    plan = make_plan(load_sweep(sweep_file(tmp_path, "modes: [deeper, compact]\n" + GRID)))
    names = [run.name for run in plan.runs]
    assert len(names) == len(set(names)) == 2 + 2 * 4  # baselines once, 4 points x 2 variants
    assert names[:4] == [
        "isometric-baseline-s0",
        "isometric-tmix-deeper-init=uniform-logits_lr_scale=1-s0",
        "isometric-baseline-compact-s0",
        "isometric-tmix-compact-init=uniform-logits_lr_scale=1-s0",
    ]
    tmix = next(
        run for run in plan.runs if run.name.endswith("init=identity-logits_lr_scale=10-s0")
    )
    assert tmix.point == ("model.mixing.init=identity", "optim.logits_lr_scale=10")
    assert set(tmix.point) <= set(tmix.overrides)
    assert all(run.point == () for run in plan.runs if run.variant == "baseline")
    assert [(p.mode, p.rel_diff < 0.005) for p in plan.pairings] == [
        ("deeper", True),
        ("compact", True),
    ]
    text = describe_plan(plan, states(plan.runs, plan.sweep_dir))
    assert (
        "grid: model.mixing.init in [uniform, identity]; optim.logits_lr_scale in [1, 10]" in text
    )
    assert "(4 point(s))" in text


def test_a_grid_key_that_concerns_baselines_pairs_them_per_point(tmp_path):
    plan = make_plan(load_sweep(sweep_file(tmp_path, "grid: {optim.lr: [0.1, 0.2]}\n")))
    assert [run.name for run in plan.runs] == [
        "isometric-baseline-lr=0.1-s0",
        "isometric-tmix-deeper-lr=0.1-s0",
        "isometric-baseline-lr=0.2-s0",
        "isometric-tmix-deeper-lr=0.2-s0",
    ]
    assert plan.runs[2].point == ("optim.lr=0.2",) and "optim.lr=0.2" in plan.runs[2].overrides


def test_command_line_overrides_apply_to_every_run(tmp_path, capsys):
    path = sweep_file(tmp_path, "dir: dry\n")
    args = ["sweep", str(path), "train.steps=3", "model.mixing.temperature=0.5", "--dry-run"]
    assert main(args) == 0
    plan = make_plan(load_sweep(path), overrides=["train.steps=3"])
    assert all("train.steps=3" in run.overrides for run in plan.runs)
    assert "train.steps=3 model.mixing.temperature=0.5" in capsys.readouterr().out
    assert main(["sweep", str(path), "run.seed=4", "--dry-run"]) == 2
    assert "sets this key on every run itself" in capsys.readouterr().err
    assert main(["sweep", str(path), "model.options.widht=3", "--dry-run"]) == 2
    assert "did you mean width" in capsys.readouterr().err


def test_a_grid_sweep_runs_resumes_only_what_is_missing_and_compares_per_point(
    real_sweep, tmp_path, monkeypatch, capsys
):
    import csv

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweep_dir = tmp_path / "grid"
    file = write_sweep(tmp_path / "g.yaml", real_sweep.data, sweep_dir, "[0]")
    base = file.read_text()
    file.write_text(base + "grid: {model.mixing.init: [uniform, identity]}\n")
    assert main(["sweep", str(file), "--wait"]) == 0
    assert "3 of 3 runs to submit" in capsys.readouterr().out
    file.write_text(base + "grid: {model.mixing.init: [uniform, identity, orthogonal]}\n")
    assert main(["sweep", str(file), "--wait"]) == 0
    assert "1 of 4 runs to submit" in capsys.readouterr().out
    assert sorted(read_jobs(sweep_dir))[-1] == "isometric-tmix-deeper-init=uniform-s0"
    assert main(["compare", str(sweep_dir)]) == 0
    lines = list(csv.DictReader((sweep_dir / "compare.csv").open()))
    assert [(line["variant"], line["paired_n"]) for line in lines] == [
        ("baseline", ""),
        ("tmix deeper [init=identity]", "1"),
        ("tmix deeper [init=orthogonal]", "1"),
        ("tmix deeper [init=uniform]", "1"),
    ]
    assert lines[1]["mixing"] == "softmax identity T=1 lr x1"
    assert lines[3]["mixing"] == "softmax uniform T=1 lr x1"
    uniform = sweep_dir / "runs" / "isometric-tmix-deeper-init=uniform-s0"
    ran = json.loads((uniform / "results.json").read_text())
    assert ran["mixing"]["init"] == "uniform" and ran["logits_lr_scale"] == 1.0
    assert load_config(str(uniform / "config.yaml")).model.mixing.init == "uniform"
    capsys.readouterr()
    assert main(["status", str(sweep_dir)]) == 0
    assert "isometric-tmix-deeper-init=orthogonal-s0" in capsys.readouterr().out
