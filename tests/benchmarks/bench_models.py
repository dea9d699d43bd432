"""`make bench-models`: what template mixing costs on the CPU, measured in one run.

1. Training step (forward + backward, batch 16) of each template variant against its baseline at
   equal depth and width (one template per position): ResNet-18 at 112 px and the isometric
   network (defaults: width 192, expansion 6, 16 positions) at 112 px (14x14 internal resolution).
2. Mixing alone (forward + backward of every bank, no convolutions): the batched contraction
   against the naive per-layer weighted sum, for the same two template variants.
Runs alternate between the two sides after warm-up; medians of wall time and of process CPU time
(and the minimum CPU time) are reported. The ratios use CPU time (robust when other jobs share the machine); one intra-op
thread by default for the same reason. Ratios last.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from train.models import build
from train.models.analysis import banks

#: model -> image size of the step benchmark
MODELS = {"resnet18": 112, "isometric": 112}


def _median_pair(a: Callable[[], None], b: Callable[[], None], warmup: int, repeats: int):
    """(median wall, median CPU, min CPU) seconds of ``a`` and of ``b``, run alternately after
    warm-up."""
    for _ in range(warmup):
        a()
        b()
    times: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    for _ in range(repeats):
        for index, fn in enumerate((a, b)):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[index].append((time.perf_counter() - wall, time.process_time() - cpu))
    return tuple(
        (
            statistics.median(t[0] for t in runs),
            statistics.median(t[1] for t in runs),
            min(t[1] for t in runs),
        )
        for runs in times.values()
    )


def _train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    return step


def _mixing_step(model: torch.nn.Module, naive: bool) -> Callable[[], None]:
    model_banks = list(banks(model).values())
    upstream = [
        [torch.randn(b.templates.shape[1]) for _ in range(b.num_positions)] for b in model_banks
    ]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss = 0.0
        for bank, grads in zip(model_banks, upstream, strict=True):
            mixed = bank.mix_naive(0) if naive else bank(0)
            for params, grad in zip(mixed, grads, strict=True):
                flat = torch.cat([p.reshape(-1) for p in params.values()])
                loss = loss + (flat * grad).sum()
        loss.backward()

    return step


def _ms(seconds: tuple[float, float, float]) -> str:
    wall, cpu, best = (1e3 * t for t in seconds)
    return f"{wall:7.1f} ms wall {cpu:7.1f} ms CPU (min {best:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
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
        base, mixed = _median_pair(
            _train_step(baseline, x, y), _train_step(tmix, x, y), args.warmup, args.repeats
        )
        print(f"{name:<10} {size} px step  baseline {_ms(base)} | tmix {_ms(mixed)}")
        batched, naive = _median_pair(
            _mixing_step(tmix, naive=False),
            _mixing_step(tmix, naive=True),
            args.warmup,
            args.repeats,
        )
        print(f"{name:<10} mixing only  batched {_ms(batched)} | naive {_ms(naive)}")
        ratios.append((name, mixed[1] / base[1], mixed[2] / base[2], naive[1] / batched[1]))
    print("\nratios of CPU time (target: tmix/baseline step <= 1.03 at equal depth and width)")
    for name, step_median, step_min, mixing in ratios:
        print(
            f"{name:<10} tmix/baseline step {step_median:.3f} (medians; mins {step_min:.3f})"
            f"   naive/batched mixing {mixing:.1f}"
        )


if __name__ == "__main__":
    main()
