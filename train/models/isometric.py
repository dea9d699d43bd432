"""The isometric network of the paper: a patchify stem to a fixed resolution and width, L
identical inverted-residual blocks sharing one global bank, a 1x1 neck and per-task heads.

Defaults are sized for ImageNet at 224 px: patch 8 gives a 28x28 internal resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from train.errors import BlockmixError
from train.models.layers import ConvNormAct, Stage
from train.models.mobilenet_v2 import InvertedResidual
from train.models.network import ModelConfig, Network


def build_isometric(config: IsometricConfig) -> Network:
    """Patchify stem (kernel = stride = patch_size), one stage of ``blocks`` positions, neck."""
    width = config.channels(config.width)
    stem = ConvNormAct(
        3, width, config.patch_size, config.patch_size, num_tasks=config.num_tasks, act="relu6"
    )
    block = InvertedResidual(width, config.channels(config.width * config.expansion), width)
    (templates,) = config.bank_templates()
    stage = Stage(None, block, config.blocks, config.num_tasks, templates, config.mixing)
    neck = ConvNormAct(width, config.head_width, 1, num_tasks=config.num_tasks, act="relu6")
    return Network(
        config,
        stem,
        [stage],
        config.head_width,
        neck=neck,
        dropout=config.dropout,
        head_init_std=0.01,
    )


@dataclass(frozen=True)
class IsometricConfig(ModelConfig):
    """Width, expansion, number of block positions, stem patch size (internal resolution =
    image size / patch size), neck width, dropout."""

    width: int = 192
    expansion: int = 6
    blocks: int = 16
    patch_size: int = 8
    head_width: int = 1280
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if min(self.width, self.expansion, self.blocks, self.patch_size, self.head_width) < 1:
            raise BlockmixError(
                "width, expansion, blocks, patch_size, head_width: isometric sizes must be >= 1"
            )
        super().__post_init__()

    def positions(self) -> tuple[int, ...]:
        return (self.blocks,)

    def with_positions(self, positions: tuple[int, ...]) -> IsometricConfig:
        (blocks,) = positions
        return self.replace(blocks=blocks)

    def build(self) -> Network:
        return build_isometric(self)
