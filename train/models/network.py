"""What every family shares: the config fields of a registered model and the network shell.

A network is stem -> stages -> optional neck -> global pool -> one classifier head per task. The
families (resnet, mobilenet_v2, isometric) only describe their blocks and stages.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from torch import Tensor, nn

from train.errors import BlockmixError
from train.models.layers import ConvNormAct, MixingConfig, Stage

VARIANTS = ("baseline", "tmix")


def round_channels(value: float, divisor: int) -> int:
    """Nearest multiple of ``divisor`` (at least ``divisor``), never more than 10% below
    ``value`` (the reference MobileNetV2 rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class ModelConfig(ABC):
    """Fields every family has. ``templates``: per bank (one int for all banks); ``None`` means
    one template per position. ``num_classes``: one int, or one per task."""

    variant: str = "baseline"
    templates: int | tuple[int, ...] | None = None
    num_classes: int | tuple[int, ...] = 1000
    num_tasks: int = 1
    width_multiplier: float = 1.0
    channel_divisor: int = 8
    mixing: MixingConfig = field(default_factory=MixingConfig)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise BlockmixError(f"variant: unknown {self.variant!r}; use one of {VARIANTS}")
        if self.num_tasks < 1:
            raise BlockmixError(f"num_tasks must be >= 1, got {self.num_tasks}")
        if len(self.head_classes()) != self.num_tasks:
            raise BlockmixError(
                f"num_classes: give one int or {self.num_tasks} (one per task), got {self.num_classes}"
            )
        if self.width_multiplier <= 0 or self.channel_divisor < 1:
            raise BlockmixError("width_multiplier must be > 0 and channel_divisor >= 1")
        banks = self.bank_templates()
        if any(k is not None and k < 1 for k in banks):
            raise BlockmixError(
                f"model.templates: every bank needs >= 1 template, got {self.templates}"
            )

    @abstractmethod
    def positions(self) -> tuple[int, ...]:
        """Shared positions per stage (the positions a stage's bank would mix)."""

    @abstractmethod
    def with_positions(self, positions: tuple[int, ...]) -> ModelConfig:
        """This config with ``positions`` shared positions per stage."""

    @abstractmethod
    def build(self) -> Network:
        """The network this config describes."""

    def head_classes(self) -> tuple[int, ...]:
        """Classes per task."""
        if isinstance(self.num_classes, int):
            return (self.num_classes,) * self.num_tasks
        return tuple(self.num_classes)

    def bank_templates(self) -> tuple[int | None, ...]:
        """Templates per stage's bank; ``None`` where a stage has no bank (baseline, or no
        shared positions)."""
        positions = self.positions()
        if isinstance(self.templates, int) or self.templates is None:
            per_stage = (self.templates,) * len(positions)
        else:
            per_stage = tuple(self.templates)
            if len(per_stage) != len(positions):
                raise BlockmixError(
                    f"model.templates: give one int or {len(positions)} values (one per stage), "
                    f"got {self.templates}"
                )
        return tuple(
            None if self.variant == "baseline" or n == 0 else (k if k is not None else n)
            for k, n in zip(per_stage, positions, strict=True)
        )

    def channels(self, base: int) -> int:
        """``base`` channels scaled by the width multiplier and rounded."""
        return round_channels(base * self.width_multiplier, self.channel_divisor)

    def replace(self, **changes: object) -> ModelConfig:
        """A copy with ``changes``; unknown names are a one-line error."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise BlockmixError(
                f"unknown model option(s) {unknown} for {type(self).__name__}; "
                f"valid: {sorted(names)}"
            )
        return dataclasses.replace(self, **changes)


class Network(nn.Module):
    """stem -> stages -> neck -> pool -> dropout -> head[task]. ``forward(x, task=0)``."""

    def __init__(
        self,
        config: ModelConfig,
        stem: ConvNormAct,
        stages: list[Stage],
        features: int,
        neck: ConvNormAct | None = None,
        stem_pool: bool = False,
        dropout: float = 0.0,
        head_init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.num_tasks = config.num_tasks
        self.stem = stem
        self.stem_pool = nn.MaxPool2d(3, 2, 1) if stem_pool else nn.Identity()
        self.stages = nn.ModuleList(stages)
        self.neck = neck
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleList(nn.Linear(features, n) for n in config.head_classes())
        if head_init_std is not None and not self.heads[0].weight.is_meta:
            for head in self.heads:
                nn.init.normal_(head.weight, 0.0, head_init_std)
                nn.init.zeros_(head.bias)

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        return self.heads[task](self.dropout(self.features(x, task)))

    def features(self, x: Tensor, task: int = 0) -> Tensor:
        """Pooled last-block (or neck) features (N, C) of ``task``, before dropout and head."""
        if not 0 <= task < self.num_tasks:
            raise IndexError(f"task {task} out of range for a {self.num_tasks}-task model")
        x = self.stem_pool(self.stem(x, task))
        for stage in self.stages:
            x = stage(x, task)
        if self.neck is not None:
            x = self.neck(x, task)
        return x.mean((2, 3))
