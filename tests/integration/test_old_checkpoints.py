"""Checkpoints written before the trainers were merged keep resuming.

``checkpoints_f77bc1a/`` is what `blockmix train demo` (the single-task `Trainer` of main at
f77bc1a) left after ``train.stop_after=2`` with `OVERRIDES`; the same code, uninterrupted,
ended at step 4 with `REFERENCE`. The one trainer resumes that checkpoint and must end there too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "checkpoints_f77bc1a"
OVERRIDES = (
    "train.steps=4", "train.epochs=0", "train.progress=false", "train.log_every=1",
    "data.batch_size=16", "checkpoint.every=0",
    "model.options.width=16", "model.options.blocks=2", "model.options.head_width=16",
)  # fmt: skip
REFERENCE = {"top1": 10.027854889631271, "top5": 49.86072480678558, "val_loss": 2.314713478088379}


def test_a_single_task_checkpoint_of_the_old_trainer_resumes_to_the_same_end(
    tmp_path: Path,
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from data_pipeline.prepare.demo import prepare_demo

    data, run = tmp_path / "demo", tmp_path / "run"
    prepare_demo(data, workers=1)
    shutil.copytree(FIXTURE, run / "checkpoints")
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    args = ["train", "demo", f"data.root={data}", f"run.dir={run}", *OVERRIDES]
    proc = subprocess.run(
        [sys.executable, "-m", "train", *args], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 4
    assert results["val_loss"] == pytest.approx(REFERENCE["val_loss"], rel=1e-4)
    for key in ("top1", "top5"):  # within one of the 359 val images
        assert results[key] == pytest.approx(REFERENCE[key], abs=0.3)
    events = EventAccumulator(str(run / "tb")).Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [3, 4]  # resumed, not redone
