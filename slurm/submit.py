"""Submit callables as jobs with submitit (SLURM, local processes or in-process), and wait for them.

A job asks for `Resources` (nodes, GPUs per node: one task per GPU, or one per node on CPU-only
partitions); everything site-specific (partition, account, QOS, paths, time) comes from a
`slurm.cluster.ClusterConfig`. Jobs are submitted with ``--requeue`` and their task's stop signal
before the time limit, so that a `slurm.tasks.Task` is checkpointed and requeued.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from tqdm import tqdm

from slurm.cluster import ClusterConfig, check_slurm_name
from train.errors import BlockmixError

_RAISED = re.compile(r"[A-Za-z_][\w.]*: ")
JOB_FOLDER = "%j"  # submitit puts each job's pickles and logs in log_root/<job id>
# Jobs run `python -m submitit.core._submit` in the submitting directory; -P keeps that directory
# off sys.path, so that its train.py or slurm.py cannot replace blockmix's packages.
JOB_PYTHON = shlex.join((sys.executable, "-P"))


@dataclass(frozen=True)
class Resources:
    """What one job asks for: ``nodes``, and GPUs per node (0 on CPU-only partitions)."""

    nodes: int = 1
    gpus_per_node: int = 0

    @property
    def tasks_per_node(self) -> int:
        """One task per GPU, or one per node without GPUs."""
        return max(self.gpus_per_node, 1)


def make_executor(
    cluster: ClusterConfig, resources: Resources, name: str, stop_signal: str = "USR2"
) -> submitit.Executor:
    """A submitit executor for ``cluster.executor`` with the job's resources and site settings;
    SLURM sends ``stop_signal`` ``cluster.signal_delay_s`` seconds before the time limit."""
    check_slurm_name(name, "job name")
    if not name:
        raise BlockmixError("job name must not be empty")
    if resources.nodes < 1 or resources.gpus_per_node < 0:
        raise BlockmixError(
            f"--nodes must be at least 1 and --gpus-per-node at least 0, got {resources.nodes} "
            f"and {resources.gpus_per_node}"
        )
    if cluster.executor != "slurm" and resources.nodes > 1:
        raise BlockmixError(
            f"the {cluster.executor} executor runs on this machine only: use --nodes 1 "
            "or --cluster slurm"
        )
    if cluster.executor == "slurm" and shutil.which("sbatch") is None:
        raise BlockmixError(
            "executor slurm: sbatch is not on PATH; run on a SLURM login node, or use "
            "--cluster local (set `executor` in the cluster config to change the default)"
        )
    executor = submitit.AutoExecutor(
        folder=cluster.log_dir / JOB_FOLDER,
        cluster=cluster.executor,
        slurm_max_num_timeout=cluster.max_timeout_requeues,
        local_max_num_timeout=cluster.max_timeout_requeues,
        slurm_python=JOB_PYTHON,
        local_python=JOB_PYTHON,
    )
    executor.update_parameters(**job_parameters(cluster, resources, name, stop_signal))
    return executor


def submit(
    task: Callable[[], Any], cluster: ClusterConfig, resources: Resources, name: str
) -> submitit.Job:
    """Submit one job whose every task calls ``task()``."""
    return make_executor(cluster, resources, name, _stop_signal(task)).submit(task)


def submit_array(
    tasks: Sequence[Callable[[], Any]], cluster: ClusterConfig, resources: Resources, name: str
) -> list[submitit.Job]:
    """Submit one job array with one element per callable, each with ``resources``."""
    executor = make_executor(cluster, resources, name, _stop_signal(tasks[0]))
    with executor.batch():
        jobs = [executor.submit(task) for task in tasks]
    return jobs


def wait(jobs: Sequence[submitit.Job], poll_s: float = 5.0) -> bool:
    """Block until every job has ended, showing states and the latest log line; True if all
    succeeded. Each failure is reported on stderr with its error and log path."""
    with tqdm(total=len(jobs), unit="job", desc="jobs", file=sys.stderr) as bar:
        pending = list(jobs)
        while pending:
            pending = [job for job in pending if not job.done()]
            bar.update(len(jobs) - len(pending) - bar.n)
            if pending:
                states = sorted(Counter(job.state for job in pending).items())
                summary = " ".join(f"{state}={count}" for state, count in states)
                bar.set_postfix_str(summary + _latest_line(pending[0]))
                time.sleep(poll_s)
        bar.set_postfix_str("")
    failures = [(job, error) for job in jobs if (error := _failure(job)) is not None]
    for job, error in failures:
        print(f"job {job.job_id} failed: {error} (log: {job.paths.stderr})", file=sys.stderr)
    return not failures


def _stop_signal(task: Callable[[], Any]) -> str:
    """The signal a task wants before the time limit (`slurm.tasks.Task.stop_signal`)."""
    return getattr(task, "stop_signal", "USR2")


def job_parameters(
    cluster: ClusterConfig, resources: Resources, name: str, stop_signal: str
) -> dict[str, Any]:
    """submitit's executor parameters for one job (what `blockmix submit --dry-run` shows)."""
    parameters: dict[str, Any] = {
        "name": name,
        "nodes": resources.nodes,
        "tasks_per_node": resources.tasks_per_node,
        "cpus_per_task": cluster.cpus_per_task,
        "timeout_min": cluster.time_min,
        "slurm_additional_parameters": {
            "requeue": True,
            "signal": f"{stop_signal}@{cluster.signal_delay_s}",
        },
    }
    if resources.gpus_per_node:
        parameters["gpus_per_node"] = resources.gpus_per_node
    if cluster.mem_gb:
        parameters["mem_gb"] = cluster.mem_gb
    for field in ("partition", "account", "qos", "constraint"):
        if getattr(cluster, field):
            parameters[f"slurm_{field}"] = getattr(cluster, field)
    return parameters


def _failure(job: submitit.Job) -> str | None:
    """Why a finished job failed (the last line of its error), or None if it succeeded."""
    try:
        error = job.exception()
    except submitit.core.utils.UncompletedJobError as uncompleted:
        error = uncompleted
    if error is None:
        return None
    lines = str(error).strip().splitlines()
    # submitit's message holds the job's traceback; its last "SomeError: message" line says why.
    raised = [line for line in lines if _RAISED.match(line)]
    return raised[-1] if raised else (lines[0] if lines else type(error).__name__)


def _latest_line(job: submitit.Job) -> str:
    """` | ` and the newest line that the job's first task wrote to its logs, or ""."""
    logs = [path for path in (job.paths.stdout, job.paths.stderr) if path.exists()]
    for log in sorted(logs, key=lambda path: path.stat().st_mtime, reverse=True):
        line = _last_line(log)
        if line:
            return f" | {line[:80]}"
    return ""


def _last_line(path: Path, max_bytes: int = 4096) -> str:
    """The last non-empty line of a log that is not submitit's own (progress bars included)."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, 2) - max_bytes))
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line and not line.startswith("submitit ")]
    return lines[-1] if lines else ""
