"""`blockmix train` on the demo digits: real ranks over gloo, real DeepSpeed, real DALI.

One uninterrupted 2-rank ZeRO-2 run is the reference that several tests compare against: the
same run stopped at step 13 and resumed must end bit-identical; resumed on 1 rank it must take
the same steps up to float rounding; its export must evaluate to its reported accuracy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

STEPS = 60
COMMON = (
    f"train.steps={STEPS}",
    "train.global_batch=64",
    "train.progress=false",
    "checkpoint.every=25",
    "model.variant=tmix",
    "train.ema_decay=0.9",
    "train.eval_every=30",
)


def blockmix(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "train", *args], capture_output=True, text=True, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"blockmix {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    return proc


def train(root: Path, run: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    args = ["train", "demo", f"data.root={root}", f"run.dir={run}", *COMMON, *extra]
    return blockmix(*args, "--nproc", str(nproc))


def exported(run: Path, ema: bool = False) -> dict[str, torch.Tensor]:
    out = run.parent / f"{run.name}{'_ema' if ema else ''}.safetensors"
    blockmix("export", str(run), "--out", str(out), *(["--ema"] if ema else []))
    return load_file(str(out))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_pipeline.prepare.demo import prepare_demo

    root = tmp_path_factory.mktemp("demo")
    prepare_demo(root)
    return root


@pytest.fixture(scope="module")
def reference(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The uninterrupted 2-rank ZeRO-2 run and its stderr."""
    run = tmp_path_factory.mktemp("runs") / "reference"
    proc = train(demo_root, run, "train.zero_stage=2")
    return run, proc.stderr


@pytest.fixture(scope="module")
def stopped(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run stopped after step 13 (a checkpoint, then exit 0)."""
    run = tmp_path_factory.mktemp("runs") / "stopped"
    train(demo_root, run, "train.zero_stage=2", "train.stop_after=13")
    return run


def test_training_learns_and_reports(reference: tuple[Path, str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, stderr = reference
    assert "terminate called" not in stderr
    results = json.loads((run / "results.json").read_text())
    for key in (
        "model",
        "variant",
        "mode",
        "params",
        "flops",
        "top1",
        "top5",
        "images_per_s",
        "steps",
        "epochs",
        "world_size",
        "seed",
        "wall_time_s",
    ):
        assert key in results
    assert results["steps"] == STEPS and results["world_size"] == 2
    assert results["variant"] == "tmix" and results["params"] > 0 and results["flops"] > 0
    assert results["top1"] > 50.0, results  # chance is 10%
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    for tag in (
        "train/loss",
        "train/top1",
        "train/lr",
        "perf/images_per_s",
        "perf/data_time_s",
        "val/top1",
        "val/top5",
        "val/loss",
    ):
        assert tag in tags["scalars"], tag
    losses = [event.value for event in events.Scalars("train/loss")]
    assert losses[-1] < losses[0] - 0.2, losses
    assert [event.step for event in events.Scalars("val/top1")] == [30, STEPS]
    alpha_tags = [tag for tag in tags["images"] if tag.startswith("alpha/task0/")]
    assert alpha_tags and [image.step for image in events.Images(alpha_tags[0])] == [30, STEPS]
    assert any(tag.startswith("alpha_hist/task0/") for tag in tags["histograms"])
    assert events.PluginTagToContent("hparams")
    assert (run / "config.yaml").is_file()
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("step*"))
    assert checkpoints == ["step00000025", "step00000050", "step00000060"]
    assert (run / "checkpoints" / "latest").read_text() == "step00000060"


def test_stop_and_resume_is_bit_identical(
    reference: tuple[Path, str], stopped: Path, tmp_path: Path, demo_root: Path
) -> None:
    run = tmp_path / "resumed"
    shutil.copytree(stopped, run)
    assert (run / "checkpoints" / "latest").read_text() == "step00000013"
    assert not (run / "results.json").exists()
    train(demo_root, run, "train.zero_stage=2")
    for ema in (False, True):
        want, got = exported(reference[0], ema), exported(run, ema)
        assert want.keys() == got.keys()
        for name in want:
            assert torch.equal(want[name], got[name]), name
    ref_results = json.loads((reference[0] / "results.json").read_text())
    results = json.loads((run / "results.json").read_text())
    assert results["top1"] == ref_results["top1"]


def test_resume_on_one_rank_continues_from_the_same_sample(
    stopped: Path, tmp_path: Path, demo_root: Path
) -> None:
    one, two = tmp_path / "one_rank", tmp_path / "two_ranks"
    shutil.copytree(stopped, one)
    shutil.copytree(stopped, two)
    train(demo_root, two, "train.zero_stage=2", "train.stop_after=16")
    train(demo_root, one, "train.zero_stage=2", "train.stop_after=16", nproc=1)
    # Same samples and crops per optimizer step, so the three steps after the move agree up to the
    # order of the gradient sums (measured: bit-identical). Further on, a first rounding difference
    # (3e-8 at step 18) grows about 30x per step at this learning rate, to 0.2 by step 40, so the
    # end of the run can only be compared by its accuracy. BatchNorm running statistics
    # legitimately differ: one rank now sees both micro-batches of a step where rank 0 saw one.
    want, got = exported(two), exported(one)
    params = [name for name in want if "running_" not in name and "num_batches" not in name]
    assert len(params) >= 10
    for name in params:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    train(demo_root, one, "train.zero_stage=2", nproc=1)
    results = json.loads((one / "results.json").read_text())
    assert results["world_size"] == 1 and results["steps"] == STEPS
    assert results["top1"] > 50.0, results  # chance is 10%


def test_export_then_eval_matches_the_run(reference: tuple[Path, str], tmp_path: Path) -> None:
    run = reference[0]
    out = tmp_path / "weights.safetensors"
    blockmix("export", str(run), "--out", str(out))
    config = run / "config.yaml"
    proc = blockmix("eval", str(config), f"weights={out}")
    evaluated = json.loads(proc.stdout.strip().splitlines()[-1])
    results = json.loads((run / "results.json").read_text())
    assert evaluated["top1"] == pytest.approx(results["top1"], abs=1e-9)
    assert evaluated["top5"] == pytest.approx(results["top5"], abs=1e-9)
    assert evaluated["loss"] == pytest.approx(results["val_loss"], rel=1e-5)


def test_zero3_resume_bit_identical_and_on_one_rank(demo_root: Path, tmp_path: Path) -> None:
    """ZeRO-3 with AdamW: exact resume on 2 ranks; on 1 rank through the universal format."""
    short = (
        "train.zero_stage=3",
        "train.steps=8",
        "model.variant=baseline",
        "train.ema_decay=0",
        "optim.name=adamw",
        "optim.lr=0.003",
    )
    full, part, one = tmp_path / "full", tmp_path / "part", tmp_path / "one"
    train(demo_root, full, *short)
    train(demo_root, part, *short, "train.stop_after=5")
    shutil.copytree(part, one)
    train(demo_root, part, *short)
    train(demo_root, one, *short, nproc=1)
    want, got, moved = exported(full), exported(part), exported(one)
    for name in want:
        assert torch.equal(want[name], got[name]), name
    # ZeRO-3 on 1 rank does not reproduce 2 ranks to rounding even uninterrupted (measured:
    # 1.6e-3 apart after 8 steps at this learning rate), so this bounds the drift of the 3 steps
    # after the move, well below what lost optimizer state or a wrong sample would cause.
    for name in want:
        if "running_" not in name and "num_batches" not in name:
            torch.testing.assert_close(moved[name], want[name], rtol=0, atol=1e-3, msg=name)


def test_bad_override_is_one_line(tmp_path: Path) -> None:
    proc = blockmix("train", "demo", "train.steps=abc", f"run.dir={tmp_path}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "train.steps" in proc.stderr
