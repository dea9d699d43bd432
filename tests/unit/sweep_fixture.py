"""A real sweep, trained once per session: tiny demo runs on submitit's local executor.

Two seeds of the demo config's baseline and its ``deeper`` variant (four runs of a few steps),
plus one run stopped after two steps (``train.stop_after``) that never finishes.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from train.cli import main

STEPS = ["train.steps=8", "train.epochs=0", "train.log_every=2", "checkpoint.every=4"]


@dataclass(frozen=True)
class RealSweep:
    root: Path
    data: Path
    sweep_file: Path
    sweep_dir: Path
    unfinished: Path  # a run directory without results


def write_sweep(
    path: Path, data: Path, sweep_dir: Path, seeds: str, executor: str = "local"
) -> Path:
    """A sweep file of the demo config's baseline and `deeper` variant over ``seeds``."""
    overrides = "".join(f"  {item.replace('=', ': ')}\n" for item in STEPS)
    path.write_text(
        f"config: demo\nmodes: [deeper]\nseeds: {seeds}\ndir: {sweep_dir}\n"
        f"cluster: {{executor: {executor}, time_min: 10}}\n"
        f"overrides:\n  data.root: {data}\n  train.progress: false\n{overrides}"
    )
    return path


@pytest.fixture(scope="session")
def real_sweep(tmp_path_factory) -> RealSweep:
    from data_pipeline.prepare.demo import prepare_demo

    root = tmp_path_factory.mktemp("sweep")
    data = root / "demo"
    prepare_demo(data)
    sweep_dir = root / "sweeps" / "pair"
    sweep_file = write_sweep(root / "pair.yaml", data, sweep_dir, "[0, 1]")
    unfinished = root / "stopped"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # four trainings share the CPU
        patch.setenv("BLOCKMIX_CLUSTER_CONFIG", str(root / "no-cluster.yaml"))
        (root / "no-cluster.yaml").write_text(f"run_root: {root}\n")
        stopped = subprocess.Popen(
            [Path(sys.executable).with_name("blockmix"), "train", "demo", f"data.root={data}",
             f"run.dir={unfinished}", "run.seed=5", "train.stop_after=2", "train.progress=false", *STEPS],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        assert main(["sweep", str(sweep_file), "--wait"]) == 0
        assert stopped.wait(timeout=300) == 0
    return RealSweep(root, data, sweep_file, sweep_dir, unfinished)
