"""blockmix runs its own code wherever the user stands, even in a folder whose own ``train.py``,
``slurm.py`` and ``data_pipeline.py`` share the names of blockmix's packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BLOCKMIX = Path(sys.executable).with_name("blockmix")
SHORT = ["train.steps=2", "train.log_every=1", "train.progress=false", "checkpoint.every=0"]


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder with modules named like blockmix's packages (importing one raises), and the
    demo digits prepared from there."""
    folder = tmp_path_factory.mktemp("user")
    for name in ("train", "slurm", "data_pipeline"):
        (folder / f"{name}.py").write_text(f"raise RuntimeError('the user folder {name}.py ran')\n")
    blockmix(folder, "prepare", "demo", "demo")
    return folder


def blockmix(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", **env)
    proc = subprocess.run([BLOCKMIX, *args], cwd=cwd, capture_output=True, text=True, env=environ)
    assert proc.returncode == 0, f"blockmix {' '.join(args)}:\n{proc.stderr[-4000:]}"
    return proc


def test_the_folder_does_shadow_a_plain_python_m(shadowed: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "train", "--help"], cwd=shadowed, text=True,
                          capture_output=True)  # fmt: skip
    assert proc.returncode != 0 and "the user folder train.py ran" in proc.stderr


def test_train_with_local_ranks(shadowed: Path) -> None:
    blockmix(shadowed, "train", "demo", f"data.root={shadowed / 'demo'}", "run.dir=runs/ranks", *SHORT,
             "--nproc", "2")  # fmt: skip
    results = json.loads((shadowed / "runs" / "ranks" / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 2


def test_submit_a_local_job(shadowed: Path) -> None:
    cluster = shadowed / "cluster.yaml"
    cluster.write_text(f"executor: local\nrun_root: {shadowed}\n")
    blockmix(shadowed, "submit", "demo", f"data.root={shadowed / 'demo'}", "run.dir=runs/job", *SHORT, "--wait",
             BLOCKMIX_CLUSTER_CONFIG=str(cluster))  # fmt: skip
    results = json.loads((shadowed / "runs" / "job" / "results.json").read_text())
    assert results["steps"] == 2
