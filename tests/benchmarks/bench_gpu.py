"""`make bench-gpu`: training images/s of the baselines and their template variants on one GPU.

Needs only torch and blockmix's model code (no DALI, DeepSpeed or OmegaConf; the DeepSpeed step
runs when DeepSpeed is importable). For resnet50, mobilenet_v2 and isometric, both
parameter-matched pairs (``deeper``: baseline vs tmix deeper; ``compact``: the narrowed baseline
vs tmix compact; every deeper pair first) train on synthetic 224 px data with SGD + momentum in
bf16 autocast with channels_last, eager and then under ``torch.compile``. The batch of a pair is
doubled from ``--batch-min`` (64) up to ``--batch-max`` (512) while a step of either side would
stay under ``--fill`` of the GPU's memory. The two sides alternate over ``--rounds`` rounds of
``--steps`` steps after warm-up; each reports the median images/s with its interquartile range
and its peak memory, and the tmix/baseline ratio is the median of the per-round ratios (printed
last, "too noisy" where the spread exceeds the effect). Compiled pairs start only within the
first ``--budget`` seconds (180), which keeps a run near 5 minutes. ``--cpu`` runs the same code
on the CPU with tiny sizes (the unit test).

Usage: ``python tests/benchmarks/bench_gpu.py [--cpu] [--models resnet50 ...] [--no-compile]``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from stats import Spread, ratios, verdict
from torch import nn

from train.models import build, count_params

MODELS = ("resnet50", "mobilenet_v2", "isometric")
MODES = ("deeper", "compact")
#: --cpu: builder overrides that make each model tiny (applied before parameter matching)
TINY = {
    "resnet50": {"width_multiplier": 0.125},
    "resnet18": {"width_multiplier": 0.125},
    "mobilenet_v2": {"width_multiplier": 0.25},
    "isometric": {"width": 32, "blocks": 4, "head_width": 64},
}


@dataclass
class Side:
    """One side of a pair: its per-round images/s and its peak memory."""

    label: str
    model: nn.Module
    rates: list[float]
    peak_bytes: int = 0


class Bench:
    """Device, sizes and the clock of one benchmark run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device("cpu" if args.cpu else "cuda")
        self.size = args.image_size or (32 if args.cpu else 224)
        self.classes = 10 if args.cpu else 1000
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated() if self.device.type == "cuda" else 0

    def build(self, name: str, variant: str, mode: str, channels_last: bool = True) -> nn.Module:
        """The model on the device; ``channels_last`` also converts its 4-d parameters (DeepSpeed
        needs contiguous ones: its step gets channels_last inputs only)."""
        overrides = TINY.get(name, {}) if self.args.cpu else {}
        model = build(name, variant, num_classes=self.classes, mode=mode, **overrides)
        layout = torch.channels_last if channels_last else torch.preserve_format
        return model.to(self.device, memory_format=layout)

    def step_fn(self, model: nn.Module, batch: int, compiled: bool) -> Callable[[], None]:
        """One training step (bf16 autocast forward, backward, SGD) on a fixed synthetic batch."""
        x = torch.randn(batch, 3, self.size, self.size, device=self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, self.classes, (batch,), device=self.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        forward = torch.compile(model, backend=self.args.compile_backend) if compiled else model

        def step() -> None:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(forward(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def fit_batch(self, model: nn.Module) -> int:
        """The batch that fills the GPU for ``model``: doubled while the next doubling's
        predicted peak (twice this one's) stays under ``--fill`` of the memory."""
        batch = self.args.batch_min
        if self.device.type != "cuda":
            return batch
        total = torch.cuda.get_device_properties(self.device).total_memory
        while batch * 2 <= self.args.batch_max:
            self.reset_peak()
            try:
                self.step_fn(model, batch, compiled=False)()
                self.sync()
            except torch.OutOfMemoryError:
                return max(self.args.batch_min, batch // 2)
            finally:
                model.zero_grad(set_to_none=True)
                gc.collect()
                torch.cuda.empty_cache()
            if 2 * self.peak() > self.args.fill * total:
                break
            batch *= 2
        return batch

    def measure(self, sides: list[Side], batch: int, compiled: bool) -> float:
        """Alternate the sides' rounds after warm-up; returns the seconds the warm-up took
        (compilation included)."""
        if compiled:
            torch._dynamo.reset()  # every model compiles afresh, within dynamo's recompile limit
        steps = [self.step_fn(side.model, batch, compiled) for side in sides]
        start = time.perf_counter()
        for step in steps:
            for _ in range(self.args.warmup):
                step()
        self.sync()
        warmup = time.perf_counter() - start
        for _ in range(self.args.rounds):
            for side, step in zip(sides, steps, strict=True):
                self.reset_peak()
                self.sync()
                start = time.perf_counter()
                for _ in range(self.args.steps):
                    step()
                self.sync()
                side.rates.append(batch * self.args.steps / (time.perf_counter() - start))
                side.peak_bytes = max(side.peak_bytes, self.peak())
        return warmup


def run_pairs(bench: Bench, compiled: bool, batches: dict[tuple[str, str], int]) -> list[str]:
    """Every model and mode, one pass (eager or compiled); returns the ratio lines."""
    lines = []
    tag = f"compile({bench.args.compile_backend})" if compiled else "eager"
    for mode in MODES:  # every model's deeper pair first: a spent budget leaves compact out
        for name in bench.args.models:
            if compiled and bench.elapsed() > bench.args.budget:
                print(
                    f"{name:<12} {mode:<7} {tag}: skipped, {bench.args.budget:.0f} s budget spent"
                )
                continue
            torch.manual_seed(0)
            base = Side("baseline", bench.build(name, "baseline", mode), [])
            tmix = Side(f"tmix {mode}", bench.build(name, "tmix", mode), [])
            key = (name, mode)
            if key not in batches:
                batches[key] = min(bench.fit_batch(tmix.model), bench.fit_batch(base.model))
            warmup = bench.measure([base, tmix], batches[key], compiled)
            for side in (base, tmix):
                params = count_params(side.model)
                peak = f"peak {side.peak_bytes / 2**30:.2f} GiB" if side.peak_bytes else ""
                print(
                    f"{name:<12} {side.label:<13} {tag:<18} batch {batches[key]:<5} "
                    f"{params / 1e6:6.2f} M params  {Spread.of(side.rates).rate('img/s')}  {peak}"
                )
            print(f"{'':12} warm-up (incl. compilation) {warmup:.1f} s")
            ratio = verdict(ratios(tmix.rates, base.rates))
            lines.append(f"{name:<12} {mode:<7} {tag:<18} tmix/baseline img/s {ratio}")
            del base, tmix
            gc.collect()
            if bench.device.type == "cuda":
                torch.cuda.empty_cache()
    return lines


def deepspeed_step(bench: Bench, batches: dict[tuple[str, str], int]) -> list[str]:
    """The deeper pairs' eager step under DeepSpeed (blockmix's generated config, default
    precision), when DeepSpeed is importable."""
    if importlib.util.find_spec("deepspeed") is None:
        print("DeepSpeed: not importable here, its step skipped")
        return []
    os.environ.setdefault("DS_ACCELERATOR", bench.device.type)
    from train import distributed
    from train import engine as ds
    from train.config import Config
    from train.models import param_groups

    distributed.init(distributed.DistEnv(master_port=distributed.free_port()))
    lines = []
    try:
        for name in bench.args.models:
            rates = {}
            for variant in ("baseline", "tmix"):
                batch = batches.get((name, "deeper"), bench.args.batch_min)
                config = Config()
                config.data.batch_size = batch
                model = bench.build(name, variant, "deeper", channels_last=False)
                engine = ds.initialize(model, param_groups(model), config)
                x = torch.randn(batch, 3, bench.size, bench.size, device=bench.device)
                x = x.to(ds.input_dtype(engine)).contiguous(memory_format=torch.channels_last)
                y = torch.randint(0, bench.classes, (batch,), device=bench.device)

                def step(engine=engine, x=x, y=y) -> None:
                    engine.backward(F.cross_entropy(engine(x), y))
                    engine.step()

                for _ in range(bench.args.warmup):
                    step()
                rates[variant] = []
                for _ in range(bench.args.rounds):
                    bench.sync()
                    start = time.perf_counter()
                    for _ in range(bench.args.steps):
                        step()
                    bench.sync()
                    rates[variant].append(batch * bench.args.steps / (time.perf_counter() - start))
                print(
                    f"{name:<12} {variant:<13} deepspeed          batch {batch:<5} "
                    f"precision {ds.precision(config, bench.device.type == 'cuda')}  "
                    f"{Spread.of(rates[variant]).rate('img/s')}"
                )
                del engine, model
                gc.collect()
            ratio = verdict(ratios(rates["tmix"], rates["baseline"]))
            lines.append(f"{name:<12} deeper  {'deepspeed':<18} tmix/baseline img/s {ratio}")
    finally:
        distributed.teardown()
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (the test)")
    parser.add_argument("--models", nargs="+", choices=list(TINY), default=list(MODELS))
    parser.add_argument("--image-size", type=int, default=0, help="0: 224 (32 with --cpu)")
    parser.add_argument("--batch-min", type=int, default=0, help="0: 64 (2 with --cpu)")
    parser.add_argument("--batch-max", type=int, default=512)
    parser.add_argument("--fill", type=float, default=0.8, help="share of GPU memory to fill")
    parser.add_argument("--steps", type=int, default=0, help="steps per round (0: 10, 1 --cpu)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per side (0: 3, 2 --cpu)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--no-deepspeed", action="store_true")
    parser.add_argument("--budget", type=float, default=180.0, help="s; no compiling after")
    args = parser.parse_args(argv)
    args.batch_min = args.batch_min or (2 if args.cpu else 64)
    args.steps = args.steps or (1 if args.cpu else 10)
    args.rounds = args.rounds or (2 if args.cpu else 3)
    if args.cpu:
        args.warmup = min(args.warmup, 1)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("bench-gpu: torch sees no CUDA GPU here; pass --cpu for the tiny CPU run")
        return 2
    bench = Bench(args)
    name = torch.cuda.get_device_name() if not args.cpu else "CPU"
    print(
        f"torch {torch.__version__} on {name}: {bench.size} px, bf16 autocast, channels_last, "
        f"{args.rounds} alternating rounds of {args.steps} steps after {args.warmup} warm-up"
    )
    torch.backends.cudnn.benchmark = True
    batches: dict[tuple[str, str], int] = {}
    lines = run_pairs(bench, False, batches)
    if not args.no_compile:
        lines += run_pairs(bench, True, batches)
    if not args.no_deepspeed:
        lines += deepspeed_step(bench, batches)
    print(f"\nratios (median of per-round ratios; {bench.elapsed():.0f} s in all)")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
