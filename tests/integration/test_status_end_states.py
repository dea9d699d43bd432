"""`blockmix status` says how ended jobs ended: SLURM's state from sacct (a real scancel on the
local cluster), and the exit code of a local-executor job."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from train.cli import main

MODES = "modes: [deeper]\nseeds: [0]\n"


def _sweep(tmp_path: Path, monkeypatch, cluster: str, overrides: str) -> Path:
    (tmp_path / "cluster.yaml").write_text(f"run_root: {tmp_path}\n")
    monkeypatch.setenv("BLOCKMIX_CLUSTER_CONFIG", str(tmp_path / "cluster.yaml"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(
        f"config: demo\n{MODES}dir: sweeps/s\noverrides: {overrides}\ncluster: {cluster}\n"
    )
    return sweep_file


def _status(sweep_dir: Path, capsys) -> list[str]:
    capsys.readouterr()
    assert main(["status", str(sweep_dir)]) == 0
    return capsys.readouterr().out.splitlines()


def test_a_cancelled_slurm_job_shows_cancelled(slurm_cluster, tmp_path, monkeypatch, capsys):
    sweep_file = _sweep(
        tmp_path,
        monkeypatch,
        "{executor: slurm, partition: debug, time_min: 10}",
        "{data.root: /nowhere, train.steps: 100000, train.progress: false}",
    )
    assert main(["sweep", str(sweep_file)]) == 0
    sweep_dir = tmp_path / "sweeps" / "s"
    jobs = json.loads((sweep_dir / "jobs.json").read_text())
    array = {job["job_id"].split("_")[0] for job in jobs.values()}.pop()
    subprocess.run(["scancel", array], check=True)  # before any task gets far
    deadline = time.monotonic() + 90
    while True:
        lines = _status(sweep_dir, capsys)
        states = [line.split()[1:3] for line in lines[1:-1]]
        if all(state == ["failed:", "CANCELLED"] for state in states):
            break
        assert time.monotonic() < deadline, lines
        time.sleep(1)
    assert lines[-1] == "2 failed"


def test_a_local_job_shows_its_exit_code(tmp_path, monkeypatch, capsys):
    sweep_file = _sweep(
        tmp_path,
        monkeypatch,
        "{executor: local, time_min: 10}",
        "{data.root: /nowhere, train.steps: 5, train.progress: false}",
    )
    assert main(["sweep", str(sweep_file), "--wait"]) == 1  # data.root does not exist
    lines = _status(tmp_path / "sweeps" / "s", capsys)
    states = [line.split()[1:4] for line in lines[1:-1]]
    assert states == [["failed:", "exit", "2"]] * 2, lines
