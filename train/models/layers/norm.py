"""BatchNorm whose running statistics belong to one task each (README, "The method" §1, §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TaskBatchNorm2d(nn.Module):
    """BatchNorm over NCHW with running statistics of shape (tasks, channels).

    With ``affine=True`` the layer owns gamma/beta (stems and necks); with ``affine=False`` the
    caller passes them (block parameters, possibly mixed from templates). Statistics are never
    mixed: each position of a network owns one of these per BN layer.
    """

    def __init__(
        self,
        channels: int,
        num_tasks: int = 1,
        affine: bool = True,
        momentum: float = 0.1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_tasks, channels))
        self.register_buffer("running_var", torch.ones(num_tasks, channels))

    def forward(
        self, x: Tensor, task: int = 0, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        """Normalise ``x`` with task ``task``'s statistics (updated in place while training)."""
        return F.batch_norm(
            x,
            self.running_mean[task],
            self.running_var[task],
            self.weight if weight is None else weight,
            self.bias if bias is None else bias,
            self.training,
            self.momentum,
            self.eps,
        )
