"""Checkpoints with a real DeepSpeed engine (1 rank, gloo): atomic publish, keep-K, restore, signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from train.checkpoint import Checkpointer, RNGState, tag_for
from train.config import CheckpointConfig, load_config
from train.errors import BlockmixError


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
    assert folder.name == tag_for(3) and meta == {
        "step": 3,
        "world_size": 1,
        "zero_stage": 2,
        "manifest": "manifest.json",
    }
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


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def two_checkpoints(engine, directory: Path) -> Checkpointer:
    ckpt = Checkpointer(directory, CheckpointConfig(keep=5), {"box": Box(1)}, {"shared": Box(2)})
    for step in (1, 2):
        train_step(engine)
        ckpt.save(engine, step)
    return ckpt


def test_any_damaged_file_falls_back_to_the_previous_checkpoint(
    engine, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from train.checkpoint import find_latest

    two_checkpoints(engine, tmp_path / "clean")
    names = sorted(p.name for p in (tmp_path / "clean" / tag_for(2)).iterdir())
    assert "manifest.json" in names and "rank00000.pt" in names and len(names) >= 6
    damages = {"flipped": flip_byte, "truncated": lambda p: p.write_bytes(p.read_bytes()[:-1])}
    damages["missing"] = Path.unlink
    for name in names:
        for how, damage in damages.items():
            copy = tmp_path / f"{how}-{name}"
            shutil.copytree(tmp_path / "clean", copy)
            damage(copy / tag_for(2) / name)
            folder, meta = find_latest(copy)
            assert (folder.name, meta["step"]) == (tag_for(1), 1), (how, name)
            assert f"checkpoint {copy / tag_for(2)} is damaged" in capfd.readouterr().err


def test_a_checkpoint_that_predates_manifests_is_used_with_a_warning(
    engine, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from train.checkpoint import find_latest

    two_checkpoints(engine, tmp_path)
    folder = tmp_path / tag_for(2)
    (folder / "manifest.json").unlink()
    assert find_latest(tmp_path)[0].name == tag_for(1)  # a later checkpoint without: damaged
    meta = json.loads((folder / "meta.json").read_text())
    del meta["manifest"]  # as blockmix wrote it before manifests
    (folder / "meta.json").write_text(json.dumps(meta))
    assert find_latest(tmp_path)[0].name == tag_for(2)
    assert f"checkpoint {folder} predates checkpoint manifests" in capfd.readouterr().err


def test_a_bad_or_missing_latest_falls_back_to_the_newest_verified(engine, tmp_path: Path) -> None:
    from train.checkpoint import find_latest

    two_checkpoints(engine, tmp_path)
    for pointer in (None, "../../outside", tag_for(7), "\x00garbage"):
        if pointer is None:
            (tmp_path / "latest").unlink(missing_ok=True)
        else:
            (tmp_path / "latest").write_text(pointer)
        assert find_latest(tmp_path)[0].name == tag_for(2)


def test_no_verified_checkpoint_is_a_one_line_error(engine, tmp_path: Path) -> None:
    from train.checkpoint import find_latest

    two_checkpoints(engine, tmp_path)
    for step in (1, 2):
        flip_byte(tmp_path / tag_for(step) / "trainer.pt")
    with pytest.raises(BlockmixError, match=r"no checkpoint in .* matches its manifest") as info:
        find_latest(tmp_path)
    assert "\n" not in str(info.value)


def test_pruning_keeps_the_newest_publication_not_the_highest_step(engine, tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, CheckpointConfig(keep=3), {}, {})
    for step in (10, 20, 30):
        ckpt.save(engine, step)
    (tmp_path / "latest").unlink()  # what a user does about a bad `latest`
    ckpt.save(engine, 5)  # a restarted run's first checkpoint
    assert sorted(p.name for p in tmp_path.glob("step*")) == [tag_for(s) for s in (5, 20, 30)]
    assert ckpt.latest()[0].name == tag_for(5)


def test_non_finite_buffers_are_never_saved(engine, tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, CheckpointConfig(), {}, {})
    ckpt.save(engine, 1)
    running_var = engine.module[1].running_var
    saved = running_var.clone()
    running_var[0] = float("inf")
    try:
        with pytest.raises(BlockmixError, match=r"not finite after step 2.*step00000001"):
            ckpt.save(engine, 2)
    finally:
        running_var.copy_(saved)
    assert ckpt.latest()[0].name == tag_for(1) and not (tmp_path / tag_for(2)).exists()


class Crafted:
    """Unpickling this runs a shell command (what a shared, crafted checkpoint could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("victim", ["mp_rank_00_model_states.pt", "rank00000.pt", "trainer.pt"])
def test_a_crafted_pickle_is_refused_by_resume_and_export(
    engine, tmp_path: Path, victim: str
) -> None:
    from train.checkpoint import _checksums, _write_manifest
    from train.export import export

    run = tmp_path / "run"
    ckpt = two_checkpoints(engine, run / "checkpoints")
    folder = run / "checkpoints" / tag_for(2)
    marker = tmp_path / "marker"
    torch.save({"module": Crafted(marker), "box": Crafted(marker)}, folder / victim)
    (folder / "manifest.json").unlink()
    _write_manifest(folder, _checksums(folder), 3)  # the manifest is no defence against this
    with pytest.raises(BlockmixError, match=f"{victim}.*(loads safely|more than tensors)"):
        ckpt.load(engine, *ckpt.latest())
    if victim == "mp_rank_00_model_states.pt":
        with pytest.raises(BlockmixError, match=victim):
            export(run, tmp_path / "w.safetensors")
    assert not marker.exists()
