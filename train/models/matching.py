"""Parameter-matched pairs (README, "The method" §3): a template variant and a baseline whose
trainable parameter counts agree within a tolerance, found by searching the free sizes.

- ``deeper``: every bank gets ``depth_multiplier`` times the baseline's shared positions and as
  many templates as the baseline has shared blocks; the extra logits are paid for by trimming the
  variant (fewest templates removed first, then the width multiplier closest to 1).
- ``compact``: the variant keeps the baseline's depth (a bank of one position gets two, so it can
  have fewer templates than positions) with ``ceil(template_ratio * blocks)`` templates per bank;
  the baseline is narrowed (width multiplier, then finer channel rounding) to the variant's count.

Counts come from networks built on the meta device: no memory, no initialisation cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from train.errors import BlockmixError
from train.models.network import ModelConfig

MODES = ("deeper", "compact")


@dataclass(frozen=True)
class MatchingConfig:
    """Tolerance (relative) and the shape of the two modes."""

    tolerance: float = 0.005
    depth_multiplier: int = 2
    template_ratio: float = 0.5


@dataclass(frozen=True)
class MatchedPair:
    """A baseline config, a template-variant config and their trainable parameter counts."""

    mode: str
    baseline: ModelConfig
    tmix: ModelConfig
    baseline_params: int
    tmix_params: int

    @property
    def rel_diff(self) -> float:
        """(tmix - baseline) / baseline."""
        return (self.tmix_params - self.baseline_params) / self.baseline_params


def config_params(config: ModelConfig) -> int:
    """Trainable parameters of the network ``config`` describes (built on the meta device)."""
    with torch.device("meta"):
        model = config.build()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def match(config: ModelConfig, mode: str, settings: MatchingConfig | None = None) -> MatchedPair:
    """The matched pair of ``mode`` for ``config`` (its variant field is ignored)."""
    settings = settings or MatchingConfig()
    if mode not in MODES:
        raise BlockmixError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    base = config.replace(variant="baseline")
    blocks = base.positions()
    if mode == "deeper":
        target = config_params(base)
        deeper = base.with_positions(tuple(settings.depth_multiplier * n for n in blocks))
        # Fewest templates removed first; if none lands within tolerance at full width, narrow
        # the variants still above the target, most trimmed (least narrowing) first.
        above = []
        for trim in range(max(blocks)):
            tmix = deeper.replace(variant="tmix", templates=tuple(max(1, n - trim) for n in blocks))
            count = config_params(tmix)
            if abs(count - target) <= settings.tolerance * target:
                return MatchedPair(mode, base, tmix, target, count)
            if count > target:
                above.append(tmix)
        for tmix in reversed(above):
            found = _fit_width(tmix, target, settings)
            if found is not None:
                return MatchedPair(mode, base, found[0], target, found[1])
    else:
        tmix = base.with_positions(tuple(2 if n == 1 else n for n in blocks)).replace(
            variant="tmix",
            templates=tuple(max(1, math.ceil(settings.template_ratio * n)) for n in blocks),
        )
        target = config_params(tmix)
        found = _fit_width(base, target, settings)
        if found is not None:
            return MatchedPair(mode, found[0], tmix, found[1], target)
    raise BlockmixError(
        f"no {mode} variant of {type(config).__name__} within {settings.tolerance:.2%} of its "
        "baseline; widen the tolerance or change the model's sizes"
    )


def _fit_width(
    config: ModelConfig, target: int, settings: MatchingConfig
) -> tuple[ModelConfig, int] | None:
    """The width multiplier (closest to 1, coarsest channel rounding first) that brings
    ``config`` within tolerance of ``target`` parameters, with its count; None if none does."""

    def within(count: int) -> bool:
        return abs(count - target) <= settings.tolerance * target

    count = config_params(config)
    if within(count):
        return config, count
    divisors = sorted({config.channel_divisor, 4, 2, 1}, reverse=True)
    for divisor in (d for d in divisors if d <= config.channel_divisor):
        # Parameters grow with the width multiplier: bisect on it, keep the closest count.
        lo, hi = (0.05, 1.0) if count > target else (1.0, 4.0)
        best: tuple[ModelConfig, int] | None = None
        while hi - lo > 2e-4:
            mid = round((lo + hi) / 2, 4)
            candidate = config.replace(width_multiplier=mid, channel_divisor=divisor)
            found = config_params(candidate)
            if within(found) and (best is None or abs(found - target) < abs(best[1] - target)):
                best = (candidate, found)
            if found == target:
                break
            lo, hi = (mid, hi) if found < target else (lo, mid)
        if best is not None:
            return best
    return None
