"""`make bench-checkpoint`: what do verifying and safe loading add to resuming from a checkpoint?

A ZeRO-2 checkpoint of a ResNet-18-sized model (sharded optimizer state included) is saved once.
Then, alternating over ``--rounds`` pairs so that load from other processes hits both sides:
- baseline: what a resume read before checksums and safe loading, DeepSpeed's
  ``engine.load_checkpoint`` plus ``torch.load(weights_only=False)`` of blockmix's own files;
- blockmix: `find_latest` (every file's size and CRC-32 against the manifest) plus
  `Checkpointer.load` (pickles parsed with ``weights_only=True`` first, then loaded so).
Files are in the page cache (warm), the case where checksums cost the most relative to reading.
Prints the median ratio blockmix / baseline with its min and max. Target: well under 2.

Usage: ``python tests/benchmarks/bench_checkpoint_verify.py [--rounds R]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from train import distributed
from train.config import load_config

os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from train import engine as ds
    from train.checkpoint import SHARED, Checkpointer, RNGState, find_latest
    from train.models import build, param_groups

    distributed.init(distributed.from_environment())
    config = load_config("demo", ["data.root=/unused", "train.zero_stage=2", "data.batch_size=2"])
    model = build("resnet18", num_classes=1000)
    engine = ds.initialize(model, param_groups(model), config)
    engine.backward(engine(torch.randn(2, 3, 64, 64)).sum())
    engine.step()  # optimizer state exists
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpointer(Path(tmp), config.checkpoint, {"rng": RNGState()}, {})
        folder = ckpt.save(engine, 1)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

        def baseline() -> None:
            engine.load_checkpoint(tmp, tag=folder.name)
            torch.load(folder / "rank00000.pt", weights_only=False)
            torch.load(folder / SHARED, weights_only=False)

        def verified() -> None:
            ckpt.load(engine, *find_latest(tmp))

        pairs = []
        for _ in range(args.rounds):
            times = []
            for load in (baseline, verified):
                start = time.perf_counter()
                load()
                times.append(time.perf_counter() - start)
            pairs.append(times)
    distributed.teardown()
    ratios = [new / old for old, new in pairs]
    old = statistics.median(p[0] for p in pairs)
    new = statistics.median(p[1] for p in pairs)
    print(f"checkpoint of {size / 2**20:.1f} MiB: load {old:.3f} s, verified safe load {new:.3f} s")
    print(
        f"ratio verified / plain load (median of {args.rounds} pairs): "
        f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}; "
        "target well under 2)"
    )


if __name__ == "__main__":
    main()
