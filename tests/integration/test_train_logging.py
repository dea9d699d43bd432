"""A run's log without a progress bar: a line per `train.log_every` steps, a line per checkpoint
saved, and where a resumed run starts from (rank 0 only, through `logging`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def blockmix(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "train", *args], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_log_lines_without_progress_bar_and_on_resume(tmp_path: Path) -> None:
    from data_pipeline.prepare.demo import prepare_demo

    data, run = tmp_path / "demo", tmp_path / "run"
    prepare_demo(data)
    args = ["train", "demo", f"data.root={data}", f"run.dir={run}", "train.steps=4"]
    args += ["train.epochs=0", "train.log_every=2", "train.progress=false", "checkpoint.every=0"]
    first = blockmix(*args, "train.stop_after=2", "--nproc", "2").stderr
    steps = re.findall(r"INFO train\.textlog: (step 2/4 epoch .*)", first)
    assert len(steps) == 1, first  # rank 0 only
    fields = r"epoch \d+\.\d\d loss \d+\.\d{4} top1 [\d.]+ top5 [\d.]+ lr [\d.e-]+ img/s [\d.]+ "
    assert re.fullmatch(r"step 2/4 " + fields + r"data [\d.]+ms eta 0:00:\d\d", steps[0]), steps
    assert f"saved checkpoint {run}/checkpoints/step00000002 (step 2)" in first
    assert "it/s]" not in first and "step/s" not in first  # no progress bar
    second = blockmix(*args).stderr
    resumed = re.findall(
        r"resumed from (\S+): step (\d+), loader epoch (\d+), sample (\d+)", second
    )
    assert resumed == [(f"{run}/checkpoints/step00000002", "2", "0", "128")], (
        second
    )  # 2 steps x 2 ranks x 32
    assert "step 4/4 epoch" in second and "step 4 val loss" in second
    assert "final top1" in second
