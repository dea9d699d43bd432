"""`make bench-models`: what template mixing costs on the CPU, measured in one run.

1. Training step (forward + backward, batch 16, 112 px) of each template variant against its
   baseline at equal depth and width (one template per position): ResNet-18, ResNet-50,
   MobileNetV2 and the isometric network (defaults: width 192, expansion 6, 16 positions; 14x14
   internal resolution). Target: tmix / baseline <= 1.03.
2. Mixing alone (forward + backward of every bank, no convolutions): the batched contraction
   against the naive per-layer weighted sum, for the same template variants.
The two sides alternate after warm-up; each call is timed in process CPU time (the claim is about
work done; wall time is printed too), and a ratio is the median of the per-round CPU-time ratios
with its interquartile range, or "too noisy" where the spread exceeds the effect (one intra-op
thread by default, so that other jobs on a shared machine disturb less). The host allocator is
set up as for training (`train.host_memory`). Where a step ratio does
not meet its target, both sides' aten operators are timed in thread CPU time over alternating
rounds and those whose time differs most are listed (``--profile always``: every model;
torch.profiler's wall-clock times are unusable on a shared machine). Ratios last.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F
from stats import Spread, alternate, verdict
from torch.utils._python_dispatch import TorchDispatchMode

from train.host_memory import keep_freed_memory
from train.models import build
from train.models.analysis import banks

#: model -> image size of the step benchmark
MODELS = {"resnet18": 112, "resnet50": 112, "mobilenet_v2": 112, "isometric": 112}
TARGET = 1.03


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


def _cpu_ratio(runs: list[list[tuple[float, float]]]) -> Spread:
    """Per-round CPU-time ratios second side / first side."""
    return Spread.of([b[1] / a[1] for a, b in zip(*runs, strict=True)])


def _ms(times: list[tuple[float, float]]) -> str:
    wall, cpu = (Spread.of(column) for column in zip(*times, strict=True))
    return f"{cpu.median * 1e3:7.1f} ms CPU ({wall.median * 1e3:7.1f} wall)"


class OpTimes(TorchDispatchMode):
    """Thread CPU seconds per aten operator (forward and backward: on the CPU the autograd
    engine runs on the calling thread). CPU time, unlike torch.profiler's wall clock, does not
    count the time other jobs hold the core."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        start = time.thread_time()
        out = func(*args, **(kwargs or {}))
        self.seconds[func.overloadpacket.__name__] += time.thread_time() - start
        return out


def op_table(a: Callable[[], None], b: Callable[[], None], rounds: int, rows: int) -> list[str]:
    """The operators whose CPU time per step differs most between ``b`` and ``a``: one step of
    each side per round, alternating, and each operator's median over the rounds."""
    samples: list[list[Counter[str]]] = [[], []]
    for _ in range(rounds):
        for fn, side in zip((a, b), samples, strict=True):
            with OpTimes() as times:
                fn()
            side.append(times.seconds)
    totals = [
        {key: statistics.median(s[key] for s in side) * 1e3 for key in set().union(*side)}
        for side in samples
    ]
    keys = set(totals[0]) | set(totals[1])
    diff = {key: totals[1].get(key, 0.0) - totals[0].get(key, 0.0) for key in keys}
    lines = [f"    {'operator (CPU ms per step)':<36} {'baseline':>9} {'tmix':>9} {'diff':>9}"]
    for key in sorted(keys, key=lambda k: abs(diff[k]), reverse=True)[:rows]:
        base, tmix = totals[0].get(key, 0.0), totals[1].get(key, 0.0)
        lines.append(f"    {key[:36]:<36} {base:9.1f} {tmix:9.1f} {diff[key]:+9.1f}")
    base, tmix = sum(totals[0].values()), sum(totals[1].values())
    lines.append(f"    {'all operators':<36} {base:9.1f} {tmix:9.1f} {tmix - base:+9.1f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--profile-rows", type=int, default=8)
    parser.add_argument("--profile-rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # as `train.engine.initialize` does for every training
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, "
        f"{args.repeats} alternating repeats after {args.warmup} warm-up, "
        f"freed heap kept: {kept}"
    )
    start = time.perf_counter()
    ratios = []
    for name in args.models:
        size = MODELS[name]
        torch.manual_seed(0)
        x = torch.randn(args.batch, 3, size, size)
        y = torch.randint(0, 1000, (args.batch,))
        baseline, tmix = build(name, "baseline"), build(name, "tmix")
        sides = (_train_step(baseline, x, y), _train_step(tmix, x, y))
        step = alternate(sides, args.warmup, args.repeats)
        print(f"{name:<12} {size} px step  baseline {_ms(step[0])} | tmix    {_ms(step[1])}")
        mixing = alternate(
            (_mixing_step(tmix, naive=False), _mixing_step(tmix, naive=True)),
            args.warmup,
            args.repeats,
        )
        print(f"{name:<12} mixing only   batched {_ms(mixing[0])} | naive   {_ms(mixing[1])}")
        step_ratio = _cpu_ratio(step)
        if args.profile == "always" or (
            args.profile == "auto" and "meets" not in verdict(step_ratio, TARGET)
        ):
            print(f"{name:<12} operators with the largest CPU-time difference per step:")
            print("\n".join(op_table(*sides, rounds=args.profile_rounds, rows=args.profile_rows)))
        ratios.append((name, step_ratio, _cpu_ratio(mixing)))
    print(
        f"\nratios: medians of per-round CPU-time ratios with IQR ({time.perf_counter() - start:.0f} s)"
    )
    for name, step_ratio, mixing_ratio in ratios:
        print(f"{name:<12} tmix/baseline step   {verdict(step_ratio, TARGET)}")
        print(f"{name:<12} naive/batched mixing {verdict(mixing_ratio)}")


if __name__ == "__main__":
    main()
