"""`blockmix submit` on the local two-node SLURM cluster: DeepSpeed over gloo, requeue and resume.

Both runs of the demo config, one left alone and one interrupted, are submitted at once and share
the cluster, so that their start-up costs overlap.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

from slurm.cluster import load_cluster_config
from slurm.submit import wait
from train.cli import main

RUN = ["train.steps=16", "train.epochs=0", "checkpoint.every=5", "train.log_every=4"]
COMPARED = ("params", "steps", "world_size", "top1", "top5", "val_loss")


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):
    """Submit both runs; yield their root, the ``--wait`` CLI process and the other job's id."""
    from data_pipeline.prepare.demo import prepare_demo

    root = tmp_path_factory.mktemp("train")
    prepare_demo(root / "demo")
    cluster_file = root / "cluster.yaml"  # as a user would write it
    cluster_file.write_text(f"executor: slurm\npartition: debug\ntime_min: 10\nrun_root: {root}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BLOCKMIX_CLUSTER_CONFIG", str(cluster_file))
        submit = ["submit", "demo", f"data.root={root / 'demo' / 'digits'}", *RUN]
        blockmix = Path(sys.executable).with_name("blockmix")
        with (root / "plain.out").open("w") as out, (root / "plain.err").open("w") as err:
            plain = subprocess.Popen(
                [blockmix, *submit, "run.dir=runs/plain", "--nodes", "2", "--wait"],
                stdout=out,
                stderr=err,
            )
        cut = subprocess.run(
            [blockmix, *submit, "run.dir=runs/cut", "--nodes", "2"],
            capture_output=True,
            text=True,
            check=True,
        )
        job_id = re.search(r"submitted job (\d+)", cut.stdout).group(1)
        job = submitit.SlurmJob(load_cluster_config().log_dir / "%j", job_id, tasks=(0, 1))
        try:
            yield root, plain, job
        finally:
            plain.kill()


def test_interrupted_job_resumes_and_matches_the_uninterrupted_run(runs):
    root, plain, job = runs
    checkpoints = root / "runs" / "cut" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints / "latest").exists():  # the first scheduled checkpoint, at step 5
        assert time.monotonic() < deadline, f"no checkpoint; log: {job.stderr()}"
        time.sleep(0.5)
    job._interrupt()  # SIGTERM (and USR2): the trainer saves a checkpoint, the task requeues
    assert wait([job], poll_s=1)
    resumed = re.findall(r"resuming .* from step(\d+)", job.stdout() or "")
    assert resumed and 5 <= int(resumed[-1]) < 16, job.stdout()
    states = subprocess.run(
        ["sacct", "-n", "-X", "--duplicates", "-j", job.job_id, "-o", "State"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert states[0] == "REQUEUED", states
    assert plain.wait(timeout=400) == 0
    expected = json.loads((root / "runs" / "plain" / "results.json").read_text())
    assert "#SBATCH --signal=TERM@120" in job.paths.submission_file.read_text()
    results = job.results()[0]
    assert {key: results[key] for key in COMPARED} == {key: expected[key] for key in COMPARED}


def test_two_node_job_trains_the_demo_config(runs):
    root, plain, _ = runs
    assert plain.wait(timeout=400) == 0, (root / "plain.err").read_text()[-3000:]
    results = json.loads((root / "runs" / "plain" / "results.json").read_text())
    assert (results["world_size"], results["steps"]) == (2, 16)
    printed = (root / "plain.out").read_text().strip().splitlines()[-1]
    assert json.loads(printed) == results
    assert "submitted job" in (root / "plain.out").read_text()


def test_submit_refuses_bad_values_in_one_line(capsys):
    assert main(["submit", "demo", "--partition", "gpu;reboot"]) == 2
    err = capsys.readouterr().err.strip()
    assert "partition: 'gpu;reboot' holds ';'" in err and "\n" not in err
