"""Short real runs of the built-in multi-task, transfer and adaptation experiments.

Each named config runs through `blockmix train` (real DeepSpeed, real DALI) for a few steps and
must write the results.json keys of its kind; transfer starts once from a run directory and
once from exported safetensors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHORT = ("train.steps=3", "train.progress=false", "train.log_every=1", "data.batch_size=16")


def blockmix(*args: str) -> None:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "train", *args], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, f"blockmix {' '.join(args)}:\n{proc.stderr[-3000:]}"


def run(config: str, root: Path, out: Path, *extra: str) -> dict:
    blockmix("train", config, f"data.root={root}", f"run.dir={out}", *SHORT, *extra)
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_pipeline.prepare.demo import prepare_demo

    root = tmp_path_factory.mktemp("demo")
    prepare_demo(root, workers=1)
    return root


@pytest.fixture(scope="module")
def multitask(demo: Path) -> Path:
    out = demo.parent / "multitask"
    run("demo_multitask", demo, out)
    return out


def test_multitask_reports_every_task_and_logs_alphas_side_by_side(multitask: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = json.loads((multitask / "results.json").read_text())
    assert set(results["tasks"]) == {"digits", "inverted", "noisy", "photo"}
    assert all(0.0 <= t["top1"] <= 100.0 for t in results["tasks"].values())
    alphas = json.loads((multitask / "alpha.json").read_text())
    assert {a["task"] for a in alphas} == {0, 1, 2, 3}
    events = EventAccumulator(str(multitask / "tb"), size_guidance={"images": 0}).Reload()
    assert "alpha/tasks" in events.Tags()["images"]
    assert "val/photo/top1" in events.Tags()["scalars"]


def test_independent_baselines_have_about_the_same_parameters(demo, multitask) -> None:
    results = run("demo_multitask_baseline", demo, demo.parent / "baseline")
    tmix = json.loads((multitask / "results.json").read_text())["params"]
    assert results["variant"] == "independent" and set(results["tasks"]) == {
        "digits",
        "inverted",
        "noisy",
        "photo",
    }
    assert abs(results["params"] - tmix) / tmix < 0.02


def test_transfer_from_a_run_and_from_exported_weights(demo, multitask) -> None:
    mode_m = run("demo_transfer", demo, demo.parent / "m", f"transfer.source={multitask}")
    weights = demo.parent / "multitask.safetensors"
    blockmix("export", str(multitask), "--out", str(weights))
    mode_all = run(
        "demo_transfer",
        demo,
        demo.parent / "all",
        f"transfer.source={weights}",
        "transfer.mode=all",
    )
    assert mode_m["trained_params"] < mode_all["trained_params"] == mode_all["total_params"]
    assert mode_m["total_params"] == mode_all["total_params"]
    assert 0 < mode_m["trained_params"] < 0.01 * mode_m["total_params"]
    assert set(mode_m["tasks"]) == {"photo"}


def test_adaptation_reports_target_accuracy_before_and_after(demo: Path) -> None:
    results = run("demo_adapt", demo, demo.parent / "adapt", "adapt.steps=2")
    assert set(results["tasks"]) == {"digits", "inverted", "noisy"}
    assert results["target"] == "photo"
    for key in ("target_top1_before", "target_top1_after"):
        assert 0.0 <= results[key] <= 100.0


def test_adaptation_starts_the_target_from_its_trained_source_task(demo: Path) -> None:
    """With the source's own domain as the target, accuracy before adapting is the source's."""
    out = demo.parent / "adapt_self"
    results = run("demo_adapt", demo, out, "adapt.target=inverted", "train.steps=20")
    assert results["target_top1_before"] == results["tasks"]["inverted"]["top1"]


def test_multitask_run_stopped_and_resumed_ends_where_the_uninterrupted_one_does(
    demo: Path, multitask: Path
) -> None:
    out = demo.parent / "resumed"
    blockmix(
        "train",
        "demo_multitask",
        f"data.root={demo}",
        f"run.dir={out}",
        *SHORT,
        "train.stop_after=2",
    )
    assert not (out / "results.json").exists()
    resumed = run("demo_multitask", demo, out)
    reference = json.loads((multitask / "results.json").read_text())
    assert resumed["tasks"] == reference["tasks"]  # every task's loader position was saved
