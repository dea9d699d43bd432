"""The trainer's early stops, in-process on 1 rank: a non-finite loss and a SIGTERM, on a
single-task config and on a multi-task one (two demo domains)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from train.errors import BlockmixError


class Batches:
    """A training loader over fixed in-memory digits-shaped batches; NaN images from ``nan_from``."""

    def __init__(self, nan_from: int | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(32, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, 10, (32,), generator=generator)
        self.nan_from, self.served = nan_from, 0
        self.steps_per_epoch, self.num_classes, self.data_time = 10, 10, 0.0

    def __iter__(self):
        for _ in range(self.steps_per_epoch):
            self.served += 1
            bad = self.nan_from is not None and self.served >= self.nan_from
            images = self.images * float("nan") if bad else self.images
            yield images, self.labels, torch.ones(32, dtype=torch.bool)

    def state_dict(self) -> dict[str, Any]:
        return {"served": self.served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.served = state["served"]

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_pipeline.prepare.demo import prepare_demo

    root = tmp_path_factory.mktemp("demo")
    prepare_demo(root)
    return root


# name -> (named config, its overrides, number of tasks)
CONFIGS = {
    "single-task": ("demo", (), 1),
    "multi-task": (
        "demo_multitask",
        ("tasks=[{name: digits, root: digits}, {name: inverted, root: inverted}]",),
        2,
    ),
}


def trainer(kind: str, root: Path, run: Path, loaders: list[Batches], *overrides: str):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from train.config import load_config
    from train.distributed import DistEnv, free_port
    from train.trainer import Trainer

    name, extra, tasks = CONFIGS[kind]
    assert len(loaders) == tasks
    base = [f"data.root={root}", f"run.dir={run}", "train.steps=6", "train.progress=false"]
    config = load_config(name, [*base, *extra, *overrides])
    return Trainer(config, DistEnv(master_port=free_port()), train_loaders=loaders)


@pytest.mark.parametrize("kind", CONFIGS)
def test_non_finite_loss_names_the_step_and_keeps_the_last_checkpoint(
    kind: str, demo_root: Path, tmp_path: Path
) -> None:
    loaders = [Batches() for _ in range(CONFIGS[kind][2] - 1)] + [Batches(nan_from=4)]
    run = trainer(kind, demo_root, tmp_path, loaders, "checkpoint.every=2")
    try:
        with pytest.raises(BlockmixError, match=r"step 4\b.*step00000002"):
            run.fit()
    finally:
        run.close()
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step00000002"
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("kind", CONFIGS)
def test_sigterm_checkpoints_and_stops(kind: str, demo_root: Path, tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR2)
    loaders = [Batches() for _ in range(CONFIGS[kind][2])]
    run = trainer(kind, demo_root, tmp_path, loaders, "checkpoint.every=0")
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag
        assert run.fit() is None
        assert run.interrupted_by_signal
    finally:
        run.close()
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGUSR2, previous[1])
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step00000001"
