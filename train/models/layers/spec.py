"""What a block is, independent of where its parameters come from.

A ``BlockSpec`` names the parameter tensors of one block shape and applies the block
functionally. The same spec serves a baseline block (which owns its parameters) and a position of
a template bank (which receives mixed parameters), so the two can never drift apart.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

#: ``bn(name, x)`` normalises ``x`` with BN layer ``name`` of the current position and task.
NormFn = Callable[[str, Tensor], Tensor]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "relu6": F.relu6}


class BlockSpec(ABC):
    """Shapes and function of one block.

    Parameter names follow one convention: a BN layer ``n`` owns ``n_weight`` and ``n_bias``
    (1-D, initialised to 1 and 0); every 4-D tensor is a conv kernel (He-normal, fan-out, as in the
    reference ResNet and MobileNetV2).
    """

    @abstractmethod
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape, in a fixed order."""

    @abstractmethod
    def forward(self, x: Tensor, p: Mapping[str, Tensor], bn: NormFn) -> Tensor:
        """Apply the block to ``x`` with parameters ``p``."""

    def norms(self) -> dict[str, int]:
        """BN layer name -> channels."""
        return {
            name.removesuffix("_weight"): shape[0]
            for name, shape in self.shapes().items()
            if name.endswith("_weight")
        }

    def num_params(self) -> int:
        """Parameters of one block of this shape."""
        return sum(math.prod(shape) for shape in self.shapes().values())

    @staticmethod
    def init_(name: str, tensor: Tensor) -> None:
        """Initialise one block-shaped parameter in place like the baseline's layers."""
        if tensor.dim() == 4:
            he_normal_(tensor)
        elif name.endswith("_weight"):
            nn.init.ones_(tensor)
        else:
            nn.init.zeros_(tensor)


def he_normal_(tensor: Tensor) -> None:
    """He-normal init (fan-out, ReLU) in place. Skipped on the meta device, where parameter
    counting builds networks: random init there would import torch's compiler (seconds)."""
    if not tensor.is_meta:
        nn.init.kaiming_normal_(tensor, mode="fan_out", nonlinearity="relu")


def bn_shapes(name: str, channels: int) -> dict[str, tuple[int, ...]]:
    """The gamma/beta entries of BN layer ``name`` for ``BlockSpec.shapes``."""
    return {f"{name}_weight": (channels,), f"{name}_bias": (channels,)}
