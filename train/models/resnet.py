"""ResNet with basic (ResNet-18/34) and bottleneck (ResNet-50, v1.5) blocks, per-stage banks.

Each stage's first block (stride or width change) is unshared; the stage's other blocks are
positions of one bank in the template variant (Savarese & Maire 2019).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from train.errors import BlockmixError
from train.models.layers import ConvNormAct, Stage
from train.models.layers.spec import BlockSpec, NormFn, bn_shapes
from train.models.network import ModelConfig, Network


def _shortcut(
    spec: BasicBlock | Bottleneck, x: Tensor, p: Mapping[str, Tensor], bn: NormFn
) -> Tensor:
    if not spec.has_shortcut_conv:
        return x
    return bn("down_bn", F.conv2d(x, p["down"], stride=spec.stride))


@dataclass(frozen=True)
class BasicBlock(BlockSpec):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, shortcut (1x1 conv-BN where the shape changes), ReLU."""

    in_channels: int
    out_channels: int
    stride: int = 1

    @property
    def has_shortcut_conv(self) -> bool:
        return self.stride != 1 or self.in_channels != self.out_channels

    def shapes(self) -> dict[str, tuple[int, ...]]:
        cin, cout = self.in_channels, self.out_channels
        shapes = {
            "conv1": (cout, cin, 3, 3),
            **bn_shapes("bn1", cout),
            "conv2": (cout, cout, 3, 3),
            **bn_shapes("bn2", cout),
        }
        if self.has_shortcut_conv:
            shapes |= {"down": (cout, cin, 1, 1), **bn_shapes("down_bn", cout)}
        return shapes

    def forward(self, x: Tensor, p: Mapping[str, Tensor], bn: NormFn) -> Tensor:
        out = F.relu(bn("bn1", F.conv2d(x, p["conv1"], stride=self.stride, padding=1)))
        out = bn("bn2", F.conv2d(out, p["conv2"], padding=1))
        return F.relu(out + _shortcut(self, x, p, bn))


@dataclass(frozen=True)
class Bottleneck(BlockSpec):
    """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand, each with BN; shortcut; ReLU."""

    in_channels: int
    width: int
    out_channels: int
    stride: int = 1

    @property
    def has_shortcut_conv(self) -> bool:
        return self.stride != 1 or self.in_channels != self.out_channels

    def shapes(self) -> dict[str, tuple[int, ...]]:
        cin, w, cout = self.in_channels, self.width, self.out_channels
        shapes = {
            "conv1": (w, cin, 1, 1),
            **bn_shapes("bn1", w),
            "conv2": (w, w, 3, 3),
            **bn_shapes("bn2", w),
            "conv3": (cout, w, 1, 1),
            **bn_shapes("bn3", cout),
        }
        if self.has_shortcut_conv:
            shapes |= {"down": (cout, cin, 1, 1), **bn_shapes("down_bn", cout)}
        return shapes

    def forward(self, x: Tensor, p: Mapping[str, Tensor], bn: NormFn) -> Tensor:
        out = F.relu(bn("bn1", F.conv2d(x, p["conv1"])))
        out = F.relu(bn("bn2", F.conv2d(out, p["conv2"], stride=self.stride, padding=1)))
        out = bn("bn3", F.conv2d(out, p["conv3"]))
        return F.relu(out + _shortcut(self, x, p, bn))


def _stage_blocks(config: ResNetConfig, in_channels: int, planes: int, stride: int):
    """First and shared block specs of one stage, and the stage's output channels."""
    if config.block == "basic":
        return (
            BasicBlock(in_channels, planes, stride),
            BasicBlock(planes, planes),
            planes,
        )
    out = planes * 4
    return Bottleneck(in_channels, planes, out, stride), Bottleneck(out, planes, out), out


def build_resnet(config: ResNetConfig) -> Network:
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages, pool, per-task heads."""
    stem_width = config.channels(config.stem_width)
    stem = ConvNormAct(3, stem_width, 7, 2, 3, config.num_tasks)
    stages, channels = [], stem_width
    for index, (depth, width, templates) in enumerate(
        zip(config.depths, config.widths, config.bank_templates(), strict=True)
    ):
        first, shared, out = _stage_blocks(
            config, channels, config.channels(width), 1 if index == 0 else 2
        )
        stages.append(Stage(first, shared, depth - 1, config.num_tasks, templates, config.mixing))
        channels = out
    return Network(config, stem, stages, channels, stem_pool=True)


@dataclass(frozen=True)
class ResNetConfig(ModelConfig):
    """A ResNet: block type, blocks per stage (the first of each unshared), stage widths."""

    block: str = "basic"
    depths: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem_width: int = 64

    def __post_init__(self) -> None:
        if self.block not in ("basic", "bottleneck"):
            raise BlockmixError(
                f"block: unknown ResNet block {self.block!r}; use basic or bottleneck"
            )
        if len(self.depths) != len(self.widths) or min(self.depths) < 1:
            raise BlockmixError("depths, widths: ResNet need one entry per stage, depths >= 1")
        super().__post_init__()

    def positions(self) -> tuple[int, ...]:
        return tuple(depth - 1 for depth in self.depths)

    def with_positions(self, positions: tuple[int, ...]) -> ResNetConfig:
        return self.replace(depths=tuple(n + 1 for n in positions))

    def build(self) -> Network:
        return build_resnet(self)
