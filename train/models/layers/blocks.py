"""Positions, stages and the plain conv-BN-activation layer of stems and necks."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from train.models.layers.norm import TaskBatchNorm2d
from train.models.layers.spec import ACTIVATIONS, BlockSpec, he_normal_
from train.models.layers.templates import MixingConfig, TemplateBank


class Block(nn.Module):
    """One position: a block applied with its own parameters (baseline, first block of a stage)
    or with parameters handed in by a template bank. Owns its per-task BN statistics."""

    def __init__(self, spec: BlockSpec, num_tasks: int = 1, owns_parameters: bool = True) -> None:
        super().__init__()
        self.spec = spec
        self.norms = nn.ModuleDict(
            {name: TaskBatchNorm2d(c, num_tasks, affine=False) for name, c in spec.norms().items()}
        )
        self.params: nn.ParameterDict | None = None
        if owns_parameters:
            self.params = nn.ParameterDict(
                {name: nn.Parameter(torch.empty(shape)) for name, shape in spec.shapes().items()}
            )
            with torch.no_grad():
                for name, param in self.params.items():
                    spec.init_(name, param)

    def forward(
        self, x: Tensor, task: int = 0, params: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        p = self.params if params is None else params

        def bn(name: str, h: Tensor) -> Tensor:
            return self.norms[name](h, task, p[f"{name}_weight"], p[f"{name}_bias"])

        return self.spec.forward(x, p, bn)


class Stage(nn.Module):
    """An optional unshared first block, then ``positions`` blocks of one shape.

    Baseline (``templates=None``): every block owns its parameters. Template variant: the
    ``positions`` blocks take their parameters from one ``TemplateBank`` of ``templates`` templates.
    """

    def __init__(
        self,
        first: BlockSpec | None,
        shared: BlockSpec | None,
        positions: int,
        num_tasks: int = 1,
        templates: int | None = None,
        mixing: MixingConfig | None = None,
    ) -> None:
        super().__init__()
        self.first = Block(first, num_tasks) if first is not None else None
        owns = templates is None or positions == 0
        self.blocks = nn.ModuleList(
            Block(shared, num_tasks, owns_parameters=owns) for _ in range(positions)
        )
        self.bank = None if owns else TemplateBank(shared, templates, positions, num_tasks, mixing)

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        if self.first is not None:
            x = self.first(x, task)
        if self.bank is None:
            for block in self.blocks:
                x = block(x, task)
        else:
            for block, params in zip(self.blocks, self.bank(task), strict=True):
                x = block(x, task, params)
        return x


class ConvNormAct(nn.Module):
    """Conv (no bias), per-task BatchNorm, activation: stems and necks."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        num_tasks: int = 1,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.norm = TaskBatchNorm2d(out_channels, num_tasks)
        self.act = ACTIVATIONS[act]
        he_normal_(self.conv.weight)

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        return self.act(self.norm(self.conv(x), task))
