"""Medians, spreads and verdicts shared by the benchmarks, so that a shared machine cannot fool them.

A benchmark measures each side of a comparison in interleaved rounds and keeps every round's
value; a ratio is then the set of per-round ratios (adjacent rounds, so slow drifts of machine load
cancel). `Spread` summarises such a set by its median and interquartile range, and `verdict`
prints "too noisy" instead of a ratio when the spread exceeds the effect measured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """Median and interquartile range (``low``, ``high``) of repeated measurements."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The summary of ``values`` (at least one)."""
        values = list(values)
        if len(values) == 1:
            return cls(values[0], values[0], values[0], 1)
        low, _, high = statistics.quantiles(values, n=4, method="inclusive")
        return cls(statistics.median(values), low, high, len(values))

    @property
    def half_width(self) -> float:
        """Half the interquartile range: the spread compared with an effect."""
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return f"{self.median:.3f} (IQR {self.low:.3f}-{self.high:.3f}, n={self.count})"

    def rate(self, unit: str) -> str:
        """A rate with its spread, e.g. ``1234 img/s (IQR 1200-1250, n=5)``."""
        head = f"{self.median:,.0f} {unit}".rstrip()
        return f"{head} (IQR {self.low:,.0f}-{self.high:,.0f}, n={self.count})"


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Spread:
    """The per-round ratios numerator_i / denominator_i of paired measurements."""
    return Spread.of([a / b for a, b in zip(numerators, denominators, strict=True)])


def verdict(ratio: Spread, target: float | None = None, at_most: bool = True) -> str:
    """The ratio with its spread, or "too noisy" when the spread exceeds the effect |median - 1|;
    then, with a ``target``, whether the whole interquartile range meets it."""
    effect = abs(ratio.median - 1)
    if ratio.count > 1 and ratio.half_width > effect:
        text = (
            f"too noisy (median {ratio.median:.3f}, spread +-{ratio.half_width:.3f} exceeds "
            f"the effect {effect:.3f}, n={ratio.count})"
        )
    else:
        text = str(ratio)
    if target is None:
        return text
    sign = "<=" if at_most else ">="
    if (ratio.high <= target) if at_most else (ratio.low >= target):
        outcome = "meets"
    elif (ratio.low > target) if at_most else (ratio.high < target):
        outcome = "misses"
    else:
        outcome = "undecided (target inside the spread)"
    return f"{text}  target {sign} {target}: {outcome}"


def alternate(
    sides: Sequence[Callable[[], None]], warmup: int, repeats: int
) -> list[list[tuple[float, float]]]:
    """Run ``sides`` in turn, ``warmup`` rounds untimed, then ``repeats`` timed rounds: per side,
    the (wall, process CPU) seconds of every timed call."""
    for _ in range(warmup):
        for side in sides:
            side()
    runs: list[list[tuple[float, float]]] = [[] for _ in sides]
    for _ in range(repeats):
        for side, times in zip(sides, runs, strict=True):
            wall, cpu = time.perf_counter(), time.process_time()
            side()
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return runs
