"""`make bench-models`: what template mixing costs on the CPU, measured in one run.

1. Training step (forward + backward, batch 16) of each template variant against its baseline at
   equal depth and width (one template per position): ResNet-18 at 112 px and the isometric
   network (defaults: width 192, expansion 6, 16 positions) at 112 px (14x14 internal resolution).
2. Mixing alone (forward + backward of every bank, no convolutions): the batched contraction
   against the naive per-layer weighted sum, for the same two template variants.
Runs alternate between the two sides after warm-up; medians of wall and process CPU time are
reported, and each ratio is the median of the CPU-time ratios of adjacent runs (CPU time and
pairing keep the ratios usable when other jobs share the machine; one intra-op thread by default
for the same reason). Ratios last.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from train.models import build
from train.models.analysis import banks

#: model -> image size of the step benchmark
MODELS = {"resnet18": 112, "isometric": 112}


@dataclass(frozen=True)
class Timing:
    """Medians of wall and CPU seconds of ``a`` and ``b``, and the median of the paired CPU ratios
    b_i / a_i (adjacent runs, so slow drifts in machine load cancel)."""

    a: tuple[float, float]
    b: tuple[float, float]
    ratio: float


def _alternate(a: Callable[[], None], b: Callable[[], None], warmup: int, repeats: int) -> Timing:
    """Run ``a`` and ``b`` alternately after warm-up and time each run."""
    for _ in range(warmup):
        a()
        b()
    runs: list[list[tuple[float, float]]] = [[], []]
    for _ in range(repeats):
        for fn, times in zip((a, b), runs, strict=True):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
    medians = [
        tuple(statistics.median(column) for column in zip(*times, strict=True)) for times in runs
    ]
    ratio = statistics.median(tb[1] / ta[1] for ta, tb in zip(*runs, strict=True))
    return Timing(medians[0], medians[1], ratio)


def _train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    return step


def _mixing_step(model: torch.nn.Module, naive: bool) -> Callable[[], None]:
    """Forward and backward of every bank alone, with fixed upstream gradients."""
    model_banks = list(banks(model).values())
    with torch.no_grad():
        grads = [torch.randn_like(p) for bank in model_banks for ps in bank(0) for p in ps.values()]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        mixed = [bank.mix_naive(0) if naive else bank(0) for bank in model_banks]
        outputs = [p for positions in mixed for ps in positions for p in ps.values()]
        torch.autograd.backward(outputs, grads)

    return step


def _ms(seconds: tuple[float, float]) -> str:
    return f"{seconds[0] * 1e3:8.1f} ms wall {seconds[1] * 1e3:8.1f} ms CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, "
        f"{args.repeats} alternating repeats after {args.warmup} warm-up"
    )
    ratios = []
    for name, size in MODELS.items():
        x = torch.randn(args.batch, 3, size, size)
        y = torch.randint(0, 1000, (args.batch,))
        baseline, tmix = build(name, "baseline"), build(name, "tmix")
        step = _alternate(
            _train_step(baseline, x, y), _train_step(tmix, x, y), args.warmup, args.repeats
        )
        print(f"{name:<10} {size} px step  baseline {_ms(step.a)} | tmix  {_ms(step.b)}")
        mixing = _alternate(
            _mixing_step(tmix, naive=True),
            _mixing_step(tmix, naive=False),
            args.warmup,
            args.repeats,
        )
        print(f"{name:<10} mixing only  naive    {_ms(mixing.a)} | batched {_ms(mixing.b)}")
        ratios.append((name, step.ratio, 1 / mixing.ratio))
    print("\nratios: medians of paired CPU-time ratios (target: tmix/baseline step <= 1.03)")
    for name, step_ratio, mixing_ratio in ratios:
        print(
            f"{name:<10} tmix/baseline step {step_ratio:.3f}   naive/batched mixing {mixing_ratio:.1f}"
        )


if __name__ == "__main__":
    main()
