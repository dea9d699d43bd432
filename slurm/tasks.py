"""The callables that SLURM tasks run; they set up torch.distributed's environment first.

A `Task` is a `submitit.helpers.Checkpointable`: when the job is preempted or reaches its time
limit, submitit calls `checkpoint`, which resubmits the same task, and the job is requeued. A task
keeps its progress on disk (e.g. the run directory's checkpoints), not in the object, so the
requeued job resumes from there without user action. Training code is imported lazily inside
`run`, so that `train` never needs submitit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import submitit

MASTER_PORTS = (20000, 60000)  # the range torch.distributed's rendezvous port is drawn from
# `blockmix train` returns this when a signal stopped it after saving a checkpoint.
STOPPED_BY_SIGNAL = 128 + signal.SIGTERM


def distributed_env() -> dict[str, str]:
    """torch.distributed's ``env://`` variables for this task of the current submitit job.

    Ranks come from SLURM (or submitit's local executor). The port is derived from the job id,
    so all tasks agree on it and a ``MASTER_PORT`` inherited from the submitting shell cannot
    leak in. The master is the first node of the allocation; under SLURM its address is the one
    srun was launched from (the batch script runs on the first node), which also works where node
    names do not resolve.
    """
    job = submitit.JobEnvironment()
    master_addr = job.hostnames[0]
    if job.cluster == "slurm":
        master_addr = os.environ.get("SLURM_LAUNCH_NODE_IPADDR", master_addr)
    port = MASTER_PORTS[0] + zlib.crc32(job.job_id.encode()) % (MASTER_PORTS[1] - MASTER_PORTS[0])
    return {
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(port),
        "RANK": str(job.global_rank),
        "WORLD_SIZE": str(job.num_tasks),
        "LOCAL_RANK": str(job.local_rank),
        "LOCAL_WORLD_SIZE": str(job.num_tasks // job.num_nodes),
    }


class Task(submitit.helpers.Checkpointable):
    """A job's callable: exports `distributed_env` into ``os.environ``, then calls `run`.

    The inherited `checkpoint` resubmits this object unchanged; `run` must resume from its own
    saved progress. ``stop_signal`` is what SLURM sends before the time limit: submitit's USR2,
    which calls `checkpoint` and requeues.
    """

    stop_signal: ClassVar[str] = "USR2"

    def __call__(self) -> Any:
        os.environ.update(distributed_env())
        return self.run()

    def run(self) -> Any:
        raise NotImplementedError


class TrainTask(Task):
    """``blockmix train CONFIG OVERRIDES...`` in every task of the job, in-process.

    The trainer handles SIGTERM itself: it saves a checkpoint at the next step and stops. So
    SLURM is asked for SIGTERM before the time limit, and when training stopped that way while
    the job is still RUNNING (a time limit or a preemption signal, not an ``scancel``), rank 0
    requeues the job; the requeued job resumes from the run directory's latest checkpoint.
    """

    stop_signal: ClassVar[str] = "TERM"

    def __init__(self, config: str, overrides: Sequence[str], run_dir: Path) -> None:
        self.config = config
        self.overrides = [*overrides, f"run.dir={run_dir}"]
        self.run_dir = run_dir

    def run(self) -> dict[str, Any] | None:
        from slurm.endstate import record_exit
        from train.cli import main
        from train.rundir import RunDir

        run_dir = RunDir(self.run_dir)
        latest = run_dir.latest_checkpoint(checksums=False)  # the trainer verifies it
        if latest is not None and _is_rank0():
            print(f"resuming {self.run_dir} from {latest[0].name}", flush=True)
        code = 1  # an exception out of main records 1
        try:
            code = main(["train", self.config, *self.overrides])
        finally:
            record_exit(code)
        if code == STOPPED_BY_SIGNAL:
            _requeue_if_running()
            sys.exit(code)  # no result: the job is not over
        if code:
            raise RuntimeError(f"blockmix train exited with code {code}; its error is logged above")
        if not _is_rank0():
            return None
        return run_dir.read_results()


def _requeue_if_running() -> None:
    """On rank 0 of a SLURM job that is still RUNNING, put it back into the queue."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id or not _is_rank0():
        return
    query = ["squeue", "-h", "-j", job_id, "-o", "%T"]
    state = subprocess.run(query, capture_output=True, text=True, timeout=60).stdout.strip()
    if state == "RUNNING":
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
        print(f"requeued job {job_id}: it resumes from its latest checkpoint", file=sys.stderr)


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"
