"""Runs that cannot be silently corrupted, in-process on 1 rank: a damaged latest checkpoint is
skipped and the resume ends bit-identical to one that never saw it; uint8 batches are normalised."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from test_train_stops import Batches, trainer


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_pipeline.prepare.demo import prepare_demo

    root = tmp_path_factory.mktemp("demo")
    prepare_demo(root)
    return root


def finish(root: Path, run: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    resumed = trainer("single-task", root, run, [Batches()], "checkpoint.every=2")
    try:
        results = resumed.fit()
        weights = {k: v.clone() for k, v in resumed.engine.module.state_dict().items()}
    finally:
        resumed.close()
    return results, weights


def test_a_flipped_byte_in_the_latest_checkpoint_resumes_from_the_previous_one_exactly(
    demo_root: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    first = trainer(
        "single-task",
        demo_root,
        tmp_path / "a",
        [Batches()],
        "checkpoint.every=2",
        "train.stop_after=4",
    )
    try:
        assert first.fit() is None
    finally:
        first.close()
    checkpoints = ["step00000002", "step00000004"]
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("step*")) == checkpoints
    shutil.copytree(tmp_path / "a", tmp_path / "damaged")
    model_states = (
        tmp_path / "damaged" / "checkpoints" / "step00000004" / "mp_rank_00_model_states.pt"
    )
    data = bytearray(model_states.read_bytes())
    data[len(data) // 2] ^= 0x01
    model_states.write_bytes(bytes(data))
    shutil.copytree(tmp_path / "a", tmp_path / "clean")  # never saw step 4
    shutil.rmtree(tmp_path / "clean" / "checkpoints" / "step00000004")
    (tmp_path / "clean" / "checkpoints" / "latest").write_text("step00000002")
    capfd.readouterr()
    damaged_results, damaged_weights = finish(demo_root, tmp_path / "damaged")
    assert "step00000004 is damaged (mp_rank_00_model_states.pt" in capfd.readouterr().err
    clean_results, clean_weights = finish(demo_root, tmp_path / "clean")
    assert damaged_results["steps"] == clean_results["steps"] == 6
    for key in ("top1", "top5", "val_loss"):
        assert damaged_results[key] == clean_results[key]
    for name, value in clean_weights.items():
        assert torch.equal(damaged_weights[name], value), name


def test_uint8_batches_are_normalised_before_the_model(demo_root: Path, tmp_path: Path) -> None:
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from train.config import load_config
    from train.distributed import DistEnv, free_port
    from train.trainer import Trainer

    overrides = [f"data.root={demo_root}", f"run.dir={tmp_path}", "train.steps=1"]
    overrides += ["train.progress=false", "data.output=uint8", "data.batch_size=16"]
    run = Trainer(load_config("demo", overrides), DistEnv(master_port=free_port()))
    seen: list[torch.Tensor] = []
    run.engine.module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        run.fit()
    finally:
        run.close()
    assert seen and all(x.dtype == torch.float32 for x in seen)
    pixels = torch.cat([x.flatten() for x in seen])
    assert -3.0 < pixels.min() < 0.0 < pixels.max() < 3.0  # normalised, not 0..255
