"""The callables that SLURM tasks run; they set up torch.distributed's environment first.

A `Task` is a `submitit.helpers.Checkpointable`: when the job is preempted or reaches its time
limit, submitit calls `checkpoint`, which resubmits the same task, and the job is requeued. A task
keeps its progress on disk (e.g. the run directory's checkpoints), not in the object, so the
requeued job resumes from there without user action. Training code is imported lazily inside
`run`, so that `train` never needs submitit.
"""

from __future__ import annotations

import os
from typing import Any

import submitit


def distributed_env() -> dict[str, str]:
    """torch.distributed's ``env://`` variables for this task of the current submitit job.

    Ranks come from SLURM (or submitit's local executor); the port is derived from the job id, so
    all tasks agree on it. The master is the first node of the allocation; under SLURM its address
    is the one srun was launched from (the batch script runs on the first node), which also works
    where node names do not resolve.
    """
    dist = submitit.helpers.TorchDistributedEnvironment()
    master_addr = dist.master_addr
    if submitit.JobEnvironment().cluster == "slurm":
        master_addr = os.environ.get("SLURM_LAUNCH_NODE_IPADDR", master_addr)
    return {
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(dist.master_port),
        "RANK": str(dist.rank),
        "WORLD_SIZE": str(dist.world_size),
        "LOCAL_RANK": str(dist.local_rank),
        "LOCAL_WORLD_SIZE": str(dist.local_world_size),
    }


class Task(submitit.helpers.Checkpointable):
    """A job's callable: exports `distributed_env` into ``os.environ``, then calls `run`.

    The inherited `checkpoint` resubmits this object unchanged; `run` must resume from its own
    saved progress.
    """

    def __call__(self) -> Any:
        os.environ.update(distributed_env())
        return self.run()

    def run(self) -> Any:
        raise NotImplementedError
