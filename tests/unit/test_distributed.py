"""Rank, world size and master from launcher environments."""

from __future__ import annotations

import os

from train import distributed
from train.distributed import DistEnv, first_host, from_environment


def test_torchrun_and_deepspeed_launchers() -> None:
    env = {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "n0",
        "MASTER_PORT": "1234",
    }
    assert from_environment(env) == DistEnv(3, 8, 1, "n0", 1234)


def test_slurm() -> None:
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
           "SLURM_JOB_NODELIST": "gpu[012-015,020]", "SLURM_JOB_ID": "4242"}  # fmt: skip
    got = from_environment(env)
    assert (got.rank, got.world_size, got.local_rank, got.master_addr) == (5, 8, 1, "gpu012")
    assert got.master_port == from_environment(env).master_port  # same on every rank


def test_single_process() -> None:
    got = from_environment({})
    assert (got.rank, got.world_size, got.local_rank, got.is_main) == (0, 1, 0, True)


def test_first_host() -> None:
    assert first_host("node7") == "node7"
    assert first_host("a[1-3],b2") == "a1"
    assert first_host("cpu[09,11]") == "cpu09"


def test_teardown_restores_the_rendezvous_variables(monkeypatch) -> None:
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("MASTER_ADDR", "kept")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    distributed.init(DistEnv(master_port=distributed.free_port()))
    assert os.environ["RANK"] == "0" and os.environ["MASTER_ADDR"] == "127.0.0.1"
    distributed.teardown()
    assert os.environ["MASTER_ADDR"] == "kept"
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"} & set(os.environ)
