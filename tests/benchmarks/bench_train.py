"""`make bench-train`: is training input-bound, and what does a sharded checkpoint cost?

1. images/s of the real training loop (`Trainer.fit`, demo config, one process) fed by the DALI
   loader and by one of its batches held in memory, in the same run: the two sources take turns
   every ``--window`` steps, so both see the same model, process and machine load. Every step is
   timed from one batch request to the next (data + forward + backward + optimizer) in wall and
   process CPU time (DALI's threads included); the first ``--skip`` steps of a window (DALI's
   prefetched batches, the switch) are left out. Each source's rate is reported per window with
   its median and interquartile range, and the ratio DALI / in-memory is the median of the
   adjacent windows' ratios (target >= 0.9), or "too noisy" where the spread exceeds the effect.
2. `Checkpointer.save` (ZeRO-2 shards + per-rank state, atomic publish) of a ResNet-18-sized
   model vs one `torch.save` of the same number of bytes, alternating ``--saves`` times.
Ratios are printed last.

Usage: ``python tests/benchmarks/bench_train.py [--rounds R] [--window W]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from stats import Spread, ratios, verdict

from train import distributed
from train.config import load_config

os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
SOURCES = ("memory", "dali")


class AlternatingLoader:
    """The DALI loader's interface; batches come from the DALI loader and from one of its batches
    kept in memory, taking turns every ``window`` steps. ``steps`` records (source, images, wall
    seconds, CPU seconds) of every step from one batch request to the next."""

    def __init__(self, real: Any, window: int) -> None:
        self.real, self.window = real, window
        self.steps_per_epoch, self.num_classes = real.steps_per_epoch, real.num_classes
        self.data_time = 0.0
        self.dali = self._dali_batches()
        self.memory = tuple(t.clone() for t in next(self.dali))
        self.steps: list[tuple[str, int, float, float]] = []
        self._count = 0
        self._open: tuple[str, int, float, float] | None = None  # the step in progress

    def _dali_batches(self) -> Iterator[Any]:
        while True:
            yield from self.real

    def __iter__(self) -> Iterator[Any]:
        for _ in range(self.steps_per_epoch):
            wall, cpu = time.perf_counter(), time.process_time()
            if self._open is not None:
                source, images, wall0, cpu0 = self._open
                self.steps.append((source, images, wall - wall0, cpu - cpu0))
            source = SOURCES[(self._count // self.window) % 2]
            batch = next(self.dali) if source == "dali" else self.memory
            self.data_time = time.perf_counter() - wall
            self._open, self._count = (source, len(batch[1]), wall, cpu), self._count + 1
            yield batch

    def rates(self, skip: int) -> dict[str, tuple[list[float], list[float]]]:
        """Per source: images/s of each complete window, by wall and by CPU time."""
        out: dict[str, tuple[list[float], list[float]]] = {s: ([], []) for s in SOURCES}
        for start in range(0, len(self.steps) - self.window + 1, self.window):
            window = self.steps[start + skip : start + self.window]
            images = sum(step[1] for step in window)
            wall, cpu = out[window[0][0]]
            wall.append(images / sum(step[2] for step in window))
            cpu.append(images / sum(step[3] for step in window))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        self.real.close()


def train_rates(root: Path, run: Path, rounds: int, window: int, skip: int):
    """One demo training whose input alternates between DALI and memory; per-source rates."""
    from data_pipeline.loader import DaliLoader
    from train.trainer import Trainer

    steps = 2 * rounds * window + 1  # the last step's end is not timed
    overrides = [f"data.root={root}", f"run.dir={run}", f"train.steps={steps}"]
    overrides += [f"train.log_every={steps}", "checkpoint.every=0", "train.progress=false"]
    config = load_config("demo", overrides)
    loader = AlternatingLoader(DaliLoader(config.data, train=True), window)
    trainer = Trainer(config, distributed.from_environment(), train_loaders=[loader])
    try:
        trainer.fit()
    finally:
        trainer.close()
    return loader.rates(skip)


def checkpoint_times(folder: Path, saves: int) -> tuple[list[float], list[float], int]:
    """Seconds of each sharded save and of each torch.save of the same bytes, and the bytes."""
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
    sharded, single, size = [], [], 0
    for step in range(1, saves + 1):
        start = time.perf_counter()
        saved = ckpt.save(engine, step)
        sharded.append(time.perf_counter() - start)
        size = sum(p.stat().st_size for p in saved.rglob("*") if p.is_file())
        blob = torch.empty(size, dtype=torch.uint8)
        start = time.perf_counter()
        with open(folder / "one.pt", "wb") as handle:
            torch.save(blob, handle)
            handle.flush()
            os.fsync(handle.fileno())
        single.append(time.perf_counter() - start)
    distributed.teardown()
    return sharded, single, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="window pairs (memory, DALI)")
    parser.add_argument("--window", type=int, default=16, help="steps per window")
    parser.add_argument("--skip", type=int, default=4, help="untimed steps opening a window")
    parser.add_argument("--saves", type=int, default=3)
    args = parser.parse_args()
    from data_pipeline.prepare.demo import prepare_demo

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare_demo(tmp / "demo")
        rates = train_rates(tmp / "demo", tmp / "run", args.rounds, args.window, args.skip)
        print(
            f"training, demo config, 1 process, {args.rounds} window pairs of {args.window} steps"
        )
        for source, (wall, cpu) in rates.items():
            print(
                f"  {source:<7} {Spread.of(wall).rate('img/s')} wall, "
                f"{Spread.of(cpu).rate('img/CPU-s')}"
            )
        sharded, single, size = checkpoint_times(tmp, args.saves)
    print(
        f"checkpoint of {size / 2**20:.1f} MiB: sharded save {Spread.of(sharded)} s, "
        f"one torch.save {Spread.of(single)} s"
    )
    (memory_wall, memory_cpu), (dali_wall, dali_cpu) = rates["memory"], rates["dali"]
    print("\nratios: medians of adjacent rounds' ratios with IQR")
    print(
        f"DALI / in-memory images/s, wall      {verdict(ratios(dali_wall, memory_wall), 0.9, False)}"
    )
    print(
        f"DALI / in-memory images per CPU-s    {verdict(ratios(dali_cpu, memory_cpu), 0.9, False)}"
    )
    print(f"sharded save / torch.save time       {verdict(ratios(sharded, single))}")


if __name__ == "__main__":
    main()
