"""MobileNetV2 with per-stage banks: each row of the inverted-residual table is a stage whose
first block is unshared and whose other blocks are positions of one bank."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from train.errors import BlockmixError
from train.models.layers import ConvNormAct, Stage
from train.models.layers.spec import BlockSpec, NormFn, bn_shapes
from train.models.network import ModelConfig, Network

#: (expansion t, channels c, blocks n, first stride s), as in the MobileNetV2 paper.
REFERENCE_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


@dataclass(frozen=True)
class InvertedResidual(BlockSpec):
    """1x1 expand (skipped when hidden == in), 3x3 depthwise, 1x1 linear project, each with BN;
    ReLU6 after the first two; identity added when stride 1 and in == out."""

    in_channels: int
    hidden: int
    out_channels: int
    stride: int = 1

    @property
    def expands(self) -> bool:
        return self.hidden != self.in_channels

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    def shapes(self) -> dict[str, tuple[int, ...]]:
        cin, hidden, cout = self.in_channels, self.hidden, self.out_channels
        expand = {"expand": (hidden, cin, 1, 1), **bn_shapes("bn1", hidden)} if self.expands else {}
        return {
            **expand,
            "depthwise": (hidden, 1, 3, 3),
            **bn_shapes("bn2", hidden),
            "project": (cout, hidden, 1, 1),
            **bn_shapes("bn3", cout),
        }

    def forward(self, x: Tensor, p: Mapping[str, Tensor], bn: NormFn) -> Tensor:
        out = F.relu6(bn("bn1", F.conv2d(x, p["expand"]))) if self.expands else x
        out = F.conv2d(out, p["depthwise"], stride=self.stride, padding=1, groups=self.hidden)
        out = bn("bn3", F.conv2d(F.relu6(bn("bn2", out)), p["project"]))
        return x + out if self.residual else out


def build_mobilenet_v2(config: MobileNetV2Config) -> Network:
    """3x3/2 stem, one stage per settings row, 1x1 neck, dropout, per-task heads."""
    channels = config.channels(config.stem_width)
    stem = ConvNormAct(3, channels, 3, 2, 1, config.num_tasks, act="relu6")
    stages = []
    for (t, c, n, s), templates in zip(config.settings, config.bank_templates(), strict=True):
        out = config.channels(c)
        first = InvertedResidual(channels, channels * t, out, s)
        shared = InvertedResidual(out, out * t, out)
        stages.append(Stage(first, shared, n - 1, config.num_tasks, templates, config.mixing))
        channels = out
    features = config.channels(config.last_channel * max(1.0, config.width_multiplier))
    neck = ConvNormAct(channels, features, 1, num_tasks=config.num_tasks, act="relu6")
    return Network(
        config, stem, stages, features, neck=neck, dropout=config.dropout, head_init_std=0.01
    )


@dataclass(frozen=True)
class MobileNetV2Config(ModelConfig):
    """MobileNetV2: the (t, c, n, s) table, stem and last-layer widths, classifier dropout."""

    settings: tuple[tuple[int, int, int, int], ...] = REFERENCE_SETTINGS
    stem_width: int = 32
    last_channel: int = 1280
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if not self.settings or min(row[2] for row in self.settings) < 1:
            raise BlockmixError("settings: MobileNetV2 needs rows (t, c, n, s) with n >= 1")
        super().__post_init__()

    def positions(self) -> tuple[int, ...]:
        return tuple(n - 1 for _, _, n, _ in self.settings)

    def with_positions(self, positions: tuple[int, ...]) -> MobileNetV2Config:
        rows = tuple(
            (t, c, k + 1, s) for (t, c, _, s), k in zip(self.settings, positions, strict=True)
        )
        return self.replace(settings=rows)

    def build(self) -> Network:
        return build_mobilenet_v2(self)
