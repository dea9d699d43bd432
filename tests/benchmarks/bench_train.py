"""`make bench-train`: is training input-bound, and what does a sharded checkpoint cost?

1. images/s of the real training loop (`Trainer.fit`, demo config, one process) fed by the DALI
   loader vs fed by in-memory tensors of the same shape: same model, same process count. The two
   alternate over ``--rounds`` pairs and the median of the paired ratios is reported, so that
   load from other processes on a shared machine hits both sides. Target: DALI / synthetic >= 0.9.
2. `Checkpointer.save` (ZeRO-2 shards + per-rank state, atomic publish) of a ResNet-18-sized
   model vs one `torch.save` of the same number of bytes. Ratios are printed last.

Usage: ``python tests/benchmarks/bench_train.py [--steps N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from train import distributed
from train.config import load_config

os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")


class SyntheticLoader:
    """The DALI loader's interface over one fixed in-memory batch (no decoding at all)."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, steps_per_epoch: int, classes: int
    ):
        self.batch = (images, labels, torch.ones(len(labels), dtype=torch.bool))
        self.steps_per_epoch, self.num_classes, self.data_time = steps_per_epoch, classes, 0.0

    def __iter__(self):
        for _ in range(self.steps_per_epoch):
            yield self.batch

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def train_rate(root: Path, run: Path, steps: int, synthetic: bool) -> float:
    """Mean images/s over the logged windows after the first (warm-up) window."""
    from train.trainer import Trainer

    overrides = [f"data.root={root}", f"run.dir={run}", f"train.steps={steps}"]
    overrides += [f"train.log_every={steps // 5}", "checkpoint.every=0", "train.progress=false"]
    config = load_config("demo", overrides)
    loader = None
    if synthetic:
        from data_pipeline.loader import DaliLoader

        real = DaliLoader(config.data, train=True)
        images, labels, _ = next(iter(real))
        loader = SyntheticLoader(
            images.clone(), labels.clone(), real.steps_per_epoch, real.num_classes
        )
        real.close()
    loaders = [loader] if loader else None
    trainer = Trainer(config, distributed.from_environment(), train_loaders=loaders)
    try:
        trainer.fit()
    finally:
        trainer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    rates = [e.value for e in events.Scalars("perf/images_per_s")][1:]
    return sum(rates) / len(rates)


def checkpoint_times(folder: Path) -> tuple[float, float, int]:
    """Seconds of a sharded save, of one torch.save of the same bytes, and the bytes."""
    from train import engine as ds
    from train.checkpoint import Checkpointer
    from train.models import build, param_groups

    distributed.init(distributed.from_environment())
    config = load_config("demo", ["data.root=/unused", "train.zero_stage=2", "data.batch_size=2"])
    model = build("resnet18", num_classes=1000)
    engine = ds.initialize(model, param_groups(model), config)
    loss = engine(torch.randn(2, 3, 64, 64)).sum()
    engine.backward(loss)
    engine.step()  # optimizer state exists
    ckpt = Checkpointer(folder / "checkpoints", config.checkpoint, {}, {})
    start = time.perf_counter()
    saved = ckpt.save(engine, 1)
    sharded = time.perf_counter() - start
    size = sum(p.stat().st_size for p in saved.rglob("*") if p.is_file())
    blob = torch.empty(size, dtype=torch.uint8)
    start = time.perf_counter()
    with open(folder / "one.pt", "wb") as handle:
        torch.save(blob, handle)
        handle.flush()
        os.fsync(handle.fileno())
    single = time.perf_counter() - start
    distributed.teardown()
    return sharded, single, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from data_pipeline.prepare.demo import prepare_demo

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare_demo(tmp / "demo")
        pairs = []
        for i in range(args.rounds):
            synthetic = train_rate(tmp / "demo", tmp / f"synthetic{i}", args.steps, synthetic=True)
            dali = train_rate(tmp / "demo", tmp / f"dali{i}", args.steps, synthetic=False)
            pairs.append((synthetic, dali))
            rates = f"synthetic {synthetic:.0f}, DALI {dali:.0f}"
            print(f"round {i}: training images/s, demo config, 1 process: {rates}")
        sharded, single, size = checkpoint_times(tmp)
    print(
        f"checkpoint of {size / 2**20:.1f} MiB: sharded save {sharded:.3f} s, one torch.save {single:.3f} s"
    )
    ratio = statistics.median(dali / synthetic for synthetic, dali in pairs)
    print(
        f"ratio DALI / synthetic images/s (median of {args.rounds} pairs): {ratio:.3f} (target >= 0.9)"
    )
    print(f"ratio sharded save / torch.save time: {sharded / single:.3f}")


if __name__ == "__main__":
    main()
