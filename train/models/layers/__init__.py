"""Building blocks shared by every family: template banks, per-task BatchNorm, positions, stages."""

from train.models.layers.blocks import Block, BlockSpec, ConvNormAct, Stage
from train.models.layers.norm import TaskBatchNorm2d
from train.models.layers.templates import MixingConfig, TemplateBank

__all__ = [
    "Block",
    "BlockSpec",
    "ConvNormAct",
    "MixingConfig",
    "Stage",
    "TaskBatchNorm2d",
    "TemplateBank",
]
