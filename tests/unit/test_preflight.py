"""`blockmix train --dry-run`, `blockmix submit --dry-run` and the check `submit` runs first."""

from __future__ import annotations

import json

import torch

from train.cli import main
from train.config import load_config
from train.engine import deepspeed_config
from train.models import build, count_params, flops_per_image

DEMO = ["demo", "data.root=/nowhere", "model.variant=tmix", "model.mode=deeper"]


def test_train_dry_run_builds_the_model_and_prints_its_deepspeed_config(capsys, tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *DEMO,
                f"run.dir={run}",
                "train.global_batch=128",
                "--nproc",
                "2",
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    config = load_config(DEMO[0], [*DEMO[1:], "train.global_batch=128"])
    mc = config.model
    with torch.device("meta"):
        model = build(mc.name, mc.variant, mc.num_classes, mc.mode, **mc.build_kwargs())
    assert f"params     {count_params(model):,}\n" in out
    assert f"GFLOPs     {flops_per_image(model, 32) / 1e9:.6g} per 32 px image" in out
    assert "isometric tmix deeper" in out
    assert "ranks      2: micro-batch 32 x accumulation 2 = global batch 128" in out
    assert out.rstrip().endswith("dry run: nothing trained")
    shown = json.loads(out[out.index("{") : out.rindex("}") + 1].replace("\n" + " " * 11, "\n"))
    assert shown == deepspeed_config(config, 2, on_gpu=False)
    assert not run.exists()  # nothing written


def test_a_bad_model_option_stops_the_dry_run_in_one_line(capsys):
    assert main(["train", *DEMO, "model.options.blokcs=3", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "blokcs" in err


def test_submit_dry_run_shows_the_slurm_resources_and_submits_nothing(
    capsys, tmp_path, monkeypatch
):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(f"executor: local\nrun_root: {tmp_path}\nlog_root: logs\ncpus_per_task: 3\n")
    monkeypatch.setenv("BLOCKMIX_CLUSTER_CONFIG", str(cluster))
    argv = ["submit", *DEMO, "--nodes", "1", "--gpus-per-node", "2", "--time", "30", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ranks      2: micro-batch 32 x accumulation 1 = global batch 64" in out
    assert f"run        {tmp_path / 'runs' / 'demo'}" in out
    resources = json.loads(
        out[out.index("local      ") + 11 : out.index("dry run")].replace("\n" + " " * 11, "\n")
    )
    assert resources["gpus_per_node"] == 2 and resources["tasks_per_node"] == 2
    assert resources["cpus_per_task"] == 3 and resources["timeout_min"] == 30
    assert out.rstrip().endswith("dry run: nothing submitted")
    assert not (tmp_path / "logs").exists()


def test_submit_checks_the_model_and_batch_before_queueing(capsys, tmp_path, monkeypatch):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(f"executor: local\nrun_root: {tmp_path}\nlog_root: logs\n")
    monkeypatch.setenv("BLOCKMIX_CLUSTER_CONFIG", str(cluster))
    argv = ["submit", *DEMO, "train.global_batch=96", "--gpus-per-node", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "train.global_batch=96 is not a multiple of data.batch_size x world size" in err
    assert not (tmp_path / "logs").exists()  # nothing was queued
