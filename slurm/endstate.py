"""How an ended job ended: SLURM's final state from accounting, or a local job's exit code.

`end_state` turns a recorded job (``jobs.json``: executor, job_id, folder) into ``TIMEOUT``,
``OUT_OF_MEMORY``, ``CANCELLED``, ``NODE_FAIL``, ``FAILED``... (``sacct``, which submitit polls
too) or ``exit N`` for the local executor, whose jobs write their exit code with `record_exit`
into their submitit folder (a job killed outright writes none: ``killed``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

EXIT_FILE = "exit_code"


def end_state(job: dict[str, str]) -> str | None:
    """How the recorded ``job`` ended, or None where nothing says (debug jobs, no accounting)."""
    if job.get("executor") == "slurm":
        return slurm_end_state(job["job_id"])
    if job.get("executor") == "local":
        path = Path(job["folder"]) / EXIT_FILE
        return f"exit {path.read_text().strip()}" if path.is_file() else "killed"
    return None


def slurm_end_state(job_id: str) -> str | None:
    """The latest run's state of a SLURM job in the accounting (``CANCELLED by 0`` gives
    ``CANCELLED``), with the exit code of a ``FAILED`` one; None when sacct cannot tell.

    Array elements that never started are recorded together under the array's id
    (``7_[2-5]``), so an element without a record of its own is looked up there.
    """
    records = _sacct(job_id)
    array, _, index = job_id.partition("_")
    if not records and index.isdigit():
        records = {
            job: state for job, state in _sacct(array).items() if _in_range(job, array, int(index))
        }
    if not records:
        return None
    state, _, exit_code = list(records.values())[-1].partition("|")
    state = state.split()[0]
    return f"{state} (exit {exit_code.split(':')[0]})" if state == "FAILED" else state


def _sacct(job_id: str) -> dict[str, str]:
    """JobID -> ``State|ExitCode`` of a job's allocations (latest run), {} if sacct fails."""
    query = ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State,ExitCode"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode:
        return {}
    lines = [line.partition("|") for line in out.stdout.splitlines() if line.strip()]
    return {job: rest for job, _, rest in lines}


def _in_range(job: str, array: str, index: int) -> bool:
    """Whether record ``job`` (``7_[0-3,6%2]``) covers element ``index`` of ``array``."""
    if not job.startswith(f"{array}_["):
        return False
    ranges = job[len(array) + 2 :].split("]")[0].split("%")[0]
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and int(low) <= index <= int(high or low):
            return True
    return False


def record_exit(code: int) -> None:
    """Rank 0 of a local-executor job writes its exit code into the job's submitit folder."""
    import submitit

    job = submitit.JobEnvironment()
    if job.cluster != "local" or job.global_rank != 0:
        return
    path = job.paths.folder / EXIT_FILE
    tmp = path.with_name(f".{EXIT_FILE}.tmp")
    tmp.write_text(f"{code}\n")
    os.replace(tmp, path)
