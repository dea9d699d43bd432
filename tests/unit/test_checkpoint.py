"""Checkpoints with a real DeepSpeed engine (1 rank, gloo): atomic publish, keep-K, restore, signals."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from train.checkpoint import Checkpointer, RNGState, tag_for
from train.config import CheckpointConfig, load_config


class Box:
    """A stateful holding one value; ``fail`` makes its state_dict raise (a crash mid-save)."""

    def __init__(self, value: int = 0) -> None:
        self.value, self.fail = value, False

    def state_dict(self) -> dict[str, Any]:
        if self.fail:
            raise OSError("disk full")
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = state["value"]


@pytest.fixture(scope="module")
def engine():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from train import distributed
    from train import engine as ds

    distributed.init(distributed.DistEnv(master_port=distributed.free_port()))
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)
    )
    config = load_config("demo", ["data.root=/x", "train.zero_stage=2", "data.batch_size=8"])
    yield ds.initialize(model, {"other": list(model.parameters())}, config)
    distributed.teardown()


def train_step(engine) -> None:
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loss = torch.nn.functional.cross_entropy(engine(x), y)
    engine.backward(loss)
    engine.step()


def params(engine) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.module.parameters()]


def test_publish_keep_and_interrupted_save(engine, tmp_path: Path) -> None:
    box = Box()
    ckpt = Checkpointer(tmp_path, CheckpointConfig(every=1, keep=2), {"box": box}, {})
    assert ckpt.latest() is None
    for step in (1, 2, 3):
        train_step(engine)
        ckpt.save(engine, step)
    assert sorted(p.name for p in tmp_path.glob("step*")) == [tag_for(2), tag_for(3)]
    folder, meta = ckpt.latest()
    assert folder.name == tag_for(3) and meta == {"step": 3, "world_size": 1, "zero_stage": 2}
    box.fail = True
    with pytest.raises(OSError):
        ckpt.save(engine, 4)
    assert (tmp_path / f".tmp-{tag_for(4)}").is_dir()  # half written, never published
    assert not (tmp_path / tag_for(4)).exists()
    assert ckpt.latest()[0].name == tag_for(3)
    box.fail = False
    ckpt.save(engine, 5)
    assert ckpt.latest()[0].name == tag_for(5)
    assert not list(tmp_path.glob(".tmp-*"))


def test_load_restores_engine_and_states(engine, tmp_path: Path) -> None:
    box, rng = Box(7), RNGState()
    ckpt = Checkpointer(tmp_path, CheckpointConfig(), {"box": box, "rng": rng}, {"shared": Box(9)})
    train_step(engine)
    ckpt.save(engine, 1)
    saved, draw = params(engine), torch.rand(3)
    train_step(engine)
    box.value = 0
    ckpt.shared["shared"].value = 0
    assert ckpt.load(engine, *ckpt.latest()) == 1
    for want, got in zip(saved, params(engine), strict=True):
        assert torch.equal(want, got)
    assert torch.equal(torch.rand(3), draw)
    assert box.value == 7 and ckpt.shared["shared"].value == 9


def test_signals_request_a_save(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, CheckpointConfig(every=0), {}, {})
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        ckpt.install_signal_handlers()
        assert not ckpt.wants_save(7)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert ckpt.wants_save(7) and not ckpt.stop_requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert ckpt.stop_requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert Checkpointer(tmp_path, CheckpointConfig(every=5), {}, {}).wants_save(10)
