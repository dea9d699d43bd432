"""Real jobs through `slurm.submit` on the local two-node SLURM cluster (and the local executor)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle

from slurm.cluster import ClusterConfig
from slurm.submit import Resources, submit, submit_array, wait
from slurm.tasks import Task

# The jobs unpickle these test classes where this module is not importable: ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class AllReduce(Task):
    """Joins a gloo process group from the exported environment and sums rank + 1."""

    def run(self) -> dict[str, object]:
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        value = torch.tensor([dist.get_rank() + 1.0])
        dist.all_reduce(value)
        result = {
            "rank": dist.get_rank(),
            "world_size": dist.get_world_size(),
            "sum": value.item(),
            "local_rank": int(os.environ["LOCAL_RANK"]),
            "node": os.environ.get("SLURMD_NODENAME", "local"),
        }
        dist.destroy_process_group()
        return result


class Counter(Task):
    """Counts to ``steps`` slowly, keeping its progress in a file, and resumes from it."""

    def __init__(self, folder: Path, steps: int) -> None:
        self.folder = folder
        self.steps = steps

    def run(self) -> int:
        progress = self.folder / "progress"
        done = int(progress.read_text()) if progress.exists() else 0
        with (self.folder / "starts").open("a") as starts:
            starts.write(f"{done}\n")
        for step in range(done, self.steps):
            time.sleep(0.25)
            (self.folder / "progress.tmp").write_text(str(step + 1))
            (self.folder / "progress.tmp").replace(progress)
        return done


class Echo(Task):
    def __init__(self, value: int) -> None:
        self.value = value

    def run(self) -> tuple[int, str]:
        return self.value, os.environ["SLURM_ARRAY_TASK_ID"]


class Fails(Task):
    def run(self) -> None:
        raise ValueError("this task fails on purpose")


def _config(tmp_path: Path, executor: str = "slurm") -> ClusterConfig:
    return ClusterConfig(
        executor=executor,
        partition="debug" if executor == "slurm" else "",
        time_min=5,
        run_root=str(tmp_path / "runs"),
        log_root=str(tmp_path / "logs"),
    )


def test_two_node_job_all_reduces_over_gloo(slurm_cluster, tmp_path, monkeypatch):
    for name, stale in {"MASTER_PORT": "1", "RANK": "5", "WORLD_SIZE": "9"}.items():
        monkeypatch.setenv(name, stale)  # the submitting shell's values must not reach the job
    job = submit(AllReduce(), _config(tmp_path), Resources(nodes=2), "allreduce")
    assert wait([job], poll_s=1)
    results = sorted(job.results(), key=lambda result: result["rank"])
    assert [result["rank"] for result in results] == [0, 1]
    assert {result["node"] for result in results} == {"node1", "node2"}
    assert all(result["world_size"] == 2 and result["sum"] == 3.0 for result in results)
    assert all(result["local_rank"] == 0 for result in results)


def test_job_array_runs_one_element_per_task(slurm_cluster, tmp_path):
    jobs = submit_array([Echo(10), Echo(11)], _config(tmp_path), Resources(), "echo")
    assert wait(jobs, poll_s=1)
    assert [job.result() for job in jobs] == [(10, "0"), (11, "1")]
    (script_file,) = (tmp_path / "logs").glob("*/*_submission.sh")
    script = script_file.read_text()
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=USR2@120" in script
    assert "#SBATCH --partition=debug" in script


def test_local_executor_runs_the_same_task(tmp_path):
    job = submit(AllReduce(), _config(tmp_path, "local"), Resources(), "allreduce-local")
    assert wait([job], poll_s=1)
    assert job.result()["sum"] == 1.0


def test_wait_reports_a_failed_job(slurm_cluster, tmp_path, capsys):
    job = submit(Fails(), _config(tmp_path), Resources(), "fails")
    assert not wait([job], poll_s=1)
    assert "this task fails on purpose" in capsys.readouterr().err


def test_preempted_job_is_checkpointed_requeued_and_resumes(slurm_cluster, tmp_path):
    steps = 40
    job = submit(Counter(tmp_path, steps), _config(tmp_path), Resources(), "counter")
    progress = tmp_path / "progress"
    deadline = time.monotonic() + 60
    while not (progress.exists() and int(progress.read_text()) >= 3):
        assert time.monotonic() < deadline, f"job made no progress: {job.stderr()}"
        time.sleep(0.2)
    job._interrupt()  # SIGTERM, then USR2: submitit calls checkpoint() and requeues the job
    assert wait([job], poll_s=1)
    starts = [int(line) for line in (tmp_path / "starts").read_text().split()]
    assert starts[0] == 0 and len(starts) == 2 and 3 <= starts[1] < steps
    assert job.result() == starts[1]
    assert int(progress.read_text()) == steps
    assert _states(job.job_id)[0] == "REQUEUED"
    deadline = time.monotonic() + 30  # the result is written just before the job ends
    while _states(job.job_id)[-1] != "COMPLETED":
        assert time.monotonic() < deadline, _states(job.job_id)
        time.sleep(0.5)


def _states(job_id: str) -> list[str]:
    """The states of every run of a job, oldest first, from SLURM's accounting."""
    command = ["sacct", "-n", "-X", "--duplicates", "-j", job_id, "-o", "State"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
