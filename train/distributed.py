"""Where this process sits in the job, process-group set-up and teardown, and local multi-rank runs.

Rank, world size and master come from the launcher's environment: torchrun and the `deepspeed`
launcher (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), SLURM
(``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, the first host of the node list), or a
single process. `launch_local` starts N ranks of the same command on this machine.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from train.orphans import die_with_parent

SLURM_BASE_PORT = 20000
RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_environ_before_init: dict[str, str | None] = {}


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes shared files."""
        return self.rank == 0


def from_environment(environ: Mapping[str, str] | None = None) -> DistEnv:
    """The job layout from torchrun/deepspeed or SLURM variables, else a single process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
            master_port=SLURM_BASE_PORT + int(env.get("SLURM_JOB_ID", "0")) % 10000,
        )
    return DistEnv(master_port=free_port())


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as ``gpu[012-015,020],cpu1``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        return nodelist
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def free_port() -> int:
    """A TCP port that is free on this host right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init(env: DistEnv) -> str:
    """Join the process group (nccl with a GPU, else gloo); return the device name to train on."""
    import deepspeed

    values = (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port)
    for name, value in zip(RENDEZVOUS_VARIABLES, values, strict=True):
        _environ_before_init.setdefault(name, os.environ.get(name))
        os.environ[name] = str(value)
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
        backend, device = "nccl", f"cuda:{env.local_rank}"
    else:
        backend, device = "gloo", "cpu"
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return device


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    Each rank's statistics follow its own batches; rank 0's are the ones DeepSpeed saves, so
    evaluating with them makes a run's accuracy that of its checkpoint and export.
    """
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)


def teardown(clean: bool = True) -> None:
    """Leave the process group so that gloo's threads end before the interpreter does.

    ``clean`` waits for every rank first; after an error it does not (peers may be gone).
    """
    if torch.distributed.is_initialized():
        if clean:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        _forget_deepspeed_groups()
    _restore_environment()


def _restore_environment() -> None:
    """Undo `init`'s rendezvous variables, so that processes this one starts later (tests, a
    sweep's local jobs) do not inherit a finished group's rank and port."""
    while _environ_before_init:
        name, value = _environ_before_init.popitem()
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _forget_deepspeed_groups() -> None:
    """Drop DeepSpeed's cached handles of the destroyed group, so a later `init` in the same
    process (tests, benchmarks) builds fresh ones instead of using dead ones."""
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is not None:
        groups._WORLD_GROUP = None
        groups._DATA_PARALLEL_GROUP = None
        groups._ZERO_PARAM_INTRA_PARALLEL_GROUP = None


def launch_local(nproc: int, argv: Sequence[str]) -> int:
    """Run ``blockmix ARGV`` as ``nproc`` ranks on this host; return the worst exit code.

    Each rank is ``python -P -m train ARGV``: ``-P`` keeps the working directory off
    ``sys.path``, so a ``train.py`` or ``slurm.py`` where the user stands cannot replace
    blockmix's packages. SIGTERM/SIGUSR2 sent to this process are passed on to every rank. When a
    rank fails, the others are given a few seconds and then terminated; when this process dies,
    even by SIGKILL, every rank gets a SIGTERM (`train.orphans`).
    """
    port, command = free_port(), [sys.executable, "-P", "-m", "train", *argv]
    children = []
    for rank in range(nproc):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE=str(nproc),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(nproc),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        dies_with_us = functools.partial(die_with_parent, os.getpid())
        children.append(subprocess.Popen(command, env=env, preexec_fn=dies_with_us))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR2)}
    try:
        return _wait_all(children)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_all(children: list[subprocess.Popen], grace_s: float = 30.0) -> int:
    failed_at: float | None = None
    while any(child.poll() is None for child in children):
        codes = [child.returncode for child in children if child.returncode is not None]
        if failed_at is None and any(code != 0 for code in codes):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > grace_s:
            for child in children:
                if child.poll() is None:
                    child.terminate()
        time.sleep(0.1)
    codes = [child.returncode for child in children]
    return next((code if code > 0 else 1 for code in codes if code != 0), 0)
