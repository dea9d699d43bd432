"""Template banks: K templates of one block shape mixed into the parameters of L positions.

A block's kernels are flattened side by side into one row, so a bank's kernel templates are one
(K, P) matrix and all positions' kernels come from one contraction per forward:
``alpha[task]`` (L, K) @ templates (K, P) -> (L, P), then cheap views per position and name
(README, "The method" §1). The block's 1-d parameters (BN gamma/beta, biases) live in a second,
small (K, P_norm) matrix mixed by the same alpha, so that the optimizer can leave them undecayed.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from train.errors import BlockmixError
from train.models.layers.spec import BlockSpec

COEFFICIENTS = ("softmax", "linear")
INITS = ("uniform", "identity", "orthogonal")


@dataclass(frozen=True)
class MixingConfig:
    """How positions combine templates (the run config's ``model.mixing``).

    ``coefficients``: ``softmax`` (alpha = softmax(xi / temperature), the default) or ``linear``
    (unconstrained real coefficients, Savarese & Maire 2019). ``init``: ``identity`` (position l
    mostly on template l mod K: logit ``identity_logit`` for softmax, exactly one-hot for linear),
    ``uniform`` (small random logits in +-init_scale: every position starts as the same block,
    the symmetric start) or ``orthogonal`` (coefficients orthogonal across positions, each
    position's row scaled to unit norm); ``None`` picks ``identity``. ``rescale_templates``:
    scale the templates so that the kernels every position receives at initialisation have the
    baseline layer's He (fan-out) standard deviation (a mixture of K independent templates has
    ``|alpha_l|_2`` times a template's).
    """

    coefficients: str = "softmax"
    init: str | None = None
    temperature: float = 1.0
    init_scale: float = 0.01
    identity_logit: float = 4.0
    rescale_templates: bool = True

    def __post_init__(self) -> None:
        if self.coefficients not in COEFFICIENTS:
            raise BlockmixError(
                f"model.mixing.coefficients: unknown {self.coefficients!r}; use one of {COEFFICIENTS}"
            )
        if self.init is not None and self.init not in INITS:
            raise BlockmixError(f"model.mixing.init: unknown {self.init!r}; use one of {INITS}")
        for name in ("temperature", "init_scale", "identity_logit"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise BlockmixError(f"model.mixing.{name} must be a finite number > 0, got {value}")

    @property
    def resolved_init(self) -> str:
        """The init in effect."""
        return self.init or "identity"


class TemplateBank(nn.Module):
    """K templates of one block shape, mixed per (task, position).

    Parameters: ``templates`` (K, P), the block's kernels flattened side by side;
    ``norm_templates`` (K, P_norm), its 1-d parameters (BN gamma/beta, biases); and ``logits``
    (tasks, L, K), the mixture logits (or linear coefficients).
    """

    def __init__(
        self,
        spec: BlockSpec,
        num_templates: int,
        num_positions: int,
        num_tasks: int = 1,
        mixing: MixingConfig | None = None,
    ) -> None:
        super().__init__()
        if num_templates < 1 or num_positions < 1:
            raise BlockmixError(
                f"a template bank needs >= 1 template and position, got K={num_templates}, "
                f"L={num_positions}"
            )
        self.mixing = mixing or MixingConfig()
        shapes = spec.shapes()
        kernels = {name: shape for name, shape in shapes.items() if len(shape) > 1}
        norms = {name: shape for name, shape in shapes.items() if len(shape) <= 1}
        self.layout = (kernels, norms)  # the columns of ``templates`` and ``norm_templates``
        self.shapes = kernels | norms  # the order in which `_Mix` returns a position's tensors
        self.num_templates = num_templates
        self.num_positions = num_positions
        self.templates = nn.Parameter(torch.empty(num_templates, _width(kernels)))
        self.norm_templates = nn.Parameter(torch.empty(num_templates, _width(norms)))
        self.logits = nn.Parameter(torch.empty(num_tasks, num_positions, num_templates))
        self.shared_from = num_positions  # positions from here on use task 0's logits
        self.reset_parameters(spec)

    def reset_parameters(self, spec: BlockSpec) -> None:
        """Logits per ``mixing.init``; templates like the baseline's layers, scaled (with
        ``mixing.rescale_templates``) so that every position's mixed kernels start at the
        baseline's He scale."""
        with torch.no_grad():
            init = self.mixing.resolved_init
            if init == "uniform":
                nn.init.uniform_(self.logits, -self.mixing.init_scale, self.mixing.init_scale)
            elif init == "orthogonal":
                for task_logits in self.logits:
                    nn.init.orthogonal_(task_logits)
                if self.mixing.coefficients == "linear":
                    self.logits.div_(self.logits.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            else:
                hot = self.mixing.identity_logit if self.mixing.coefficients == "softmax" else 1.0
                self.logits.zero_()
                positions = torch.arange(self.num_positions)
                self.logits[:, positions, positions % self.num_templates] = hot
            kernel_scale = 1.0
            if self.mixing.rescale_templates and not self.logits.is_meta:
                kernel_scale = 1.0 / self.alpha(0).norm(dim=-1).pow(2).mean().sqrt().item()
            views = self.template_views()
            for name, view in views.items():
                for template in view:
                    spec.init_(name, template)
            for name in self.layout[0]:
                views[name].mul_(kernel_scale)

    def matrices(self) -> tuple[Tensor, Tensor]:
        """The template matrices: kernels, then 1-d parameters."""
        return self.templates, self.norm_templates

    def template_views(self, matrices: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """Name -> view of shape (K, *shape) into the template matrices (or into ``matrices``,
        e.g. their gradients). Views share storage: write to them under ``torch.no_grad()``."""
        views = {}
        for matrix, shapes in zip(matrices or self.matrices(), self.layout, strict=True):
            start = 0
            for name, shape in shapes.items():
                size = math.prod(shape)
                views[name] = matrix[:, start : start + size].view(self.num_templates, *shape)
                start += size
        return views

    def alpha(self, task: int = 0) -> Tensor:
        """Mixture weights (L, K) of ``task``: softmax of logits / temperature, or the raw
        coefficients in linear mode."""
        logits = self.logits[task]
        if task and self.shared_from < self.num_positions:
            logits = torch.cat((logits[: self.shared_from], self.logits[0, self.shared_from :]))
        if self.mixing.coefficients == "linear":
            return logits
        return torch.softmax(logits / self.mixing.temperature, dim=-1)

    def forward(self, task: int = 0) -> list[dict[str, Tensor]]:
        """Every position's parameters for ``task``: one (L, K) @ (K, P) contraction for the
        kernels and one for the small 1-d parameter matrix. Mixed in fp32 under autocast too, so
        that BN gamma/beta stay fp32 and kernels are cast at the convolution, like a baseline's."""
        device = self.templates.device.type
        with torch.autocast(device, enabled=False) if _autocasting(device) else nullcontext():
            parts = iter(_Mix.apply(self.alpha(task), self.layout, *self.matrices()))
        return [{name: next(parts) for name in self.shapes} for _ in range(self.num_positions)]

    def mix_naive(self, task: int = 0) -> list[dict[str, Tensor]]:
        """Reference: per position and tensor, a Python weighted sum of templates (tests and
        benchmark only)."""
        alpha = self.alpha(task)
        views = self.template_views()
        return [
            {
                name: sum(alpha[pos, k] * views[name][k] for k in range(self.num_templates))
                for name in self.shapes
            }
            for pos in range(self.num_positions)
        ]

    def extra_repr(self) -> str:
        return (
            f"templates={self.num_templates}, positions={self.num_positions}, "
            f"tasks={self.logits.shape[0]}, "
            f"params_per_template={self.templates.shape[1] + self.norm_templates.shape[1]}, "
            f"coefficients={self.mixing.coefficients}"
        )


def _autocasting(device: str) -> bool:
    """Whether autocast is on for ``device`` (never for devices autocast does not know)."""
    return device in ("cpu", "cuda") and torch.is_autocast_enabled(device)


def _width(shapes: dict[str, tuple[int, ...]]) -> int:
    """Columns of a template matrix holding ``shapes`` side by side."""
    return sum(math.prod(shape) for shape in shapes.values())


class _Mix(torch.autograd.Function):
    """alpha (L, K) @ each template matrix (K, P_m), returned as per-position, per-tensor views
    (per position: the tensors of every matrix in ``layout`` order).

    The backward works tensor by tensor: it stacks one tensor's gradients of all positions
    (L, P_n) and applies both GEMMs while that block is still in cache, instead of autograd's
    zero-filled ``unbind``/``split`` gradients and two passes over the whole L x P gradient.
    """

    @staticmethod
    def forward(ctx, alpha, layout, *matrices):  # type: ignore[override]
        ctx.save_for_backward(alpha, *matrices)
        ctx.layout = layout
        mixed = [alpha @ matrix for matrix in matrices]
        return tuple(
            part.view(shape)
            for position in range(alpha.shape[0])
            for rows, shapes in zip(mixed, layout, strict=True)
            for part, shape in zip(
                rows[position].split([math.prod(s) for s in shapes.values()]),
                shapes.values(),
                strict=True,
            )
        )

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):  # type: ignore[override]
        alpha, *matrices = ctx.saved_tensors
        need_alpha, _, *need_matrices = ctx.needs_input_grad
        grad_alpha = torch.zeros_like(alpha) if need_alpha else None
        grad_matrices = [
            torch.empty_like(m) if need else None
            for m, need in zip(matrices, need_matrices, strict=True)
        ]
        per_position = sum(len(shapes) for shapes in ctx.layout)
        index = 0
        for matrix, grad_matrix, shapes in zip(matrices, grad_matrices, ctx.layout, strict=True):
            start = 0
            for shape in shapes.values():
                size = math.prod(shape)
                stacked = torch.stack([g.reshape(-1) for g in grads[index::per_position]])
                columns = slice(start, start + size)
                if need_alpha:
                    grad_alpha.addmm_(stacked, matrix[:, columns].T)
                if grad_matrix is not None:
                    grad_matrix[:, columns] = alpha.T @ stacked
                start += size
                index += 1
        return grad_alpha, None, *grad_matrices
