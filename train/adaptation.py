"""Unsupervised multi-source domain adaptation by mixture logits (README, "The method" §4).

The target task's mixture logits (and, optionally, the stem) are the only trained parameters;
the loss compares pooled last-block features of unlabeled target images with those of the
labelled source tasks: ``moment`` (means and variances, per source), ``adversarial`` (a domain
discriminator behind a gradient-reversal layer) or ``discrepancy`` (MCD's generator step: two
source heads should agree on target features). Target labels are never read: batches are
unpacked as ``images, _, _``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from data_pipeline.config import DataConfig
from data_pipeline.loader import model_input
from train.models import TemplateBank
from train.tasks import AdaptConfig


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return -grad


def moment_loss(target: Tensor, sources: Sequence[Tensor]) -> Tensor:
    """Sum over sources of squared distances between feature means and variances."""
    mean, var = target.mean(0), target.var(0)
    return sum(((mean - s.mean(0)) ** 2).sum() + ((var - s.var(0)) ** 2).sum() for s in sources)


def discrepancy_loss(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Mean absolute difference of two heads' class probabilities (MCD)."""
    return (logits_a.softmax(-1) - logits_b.softmax(-1)).abs().mean()


class Adapter:
    """Adapts task ``target`` of ``model`` towards unlabeled target images.

    Only ``target``'s rows of every bank's logits (and the stem with ``config.stem``) change;
    the adversarial discriminator is created here and trained alongside.
    """

    def __init__(
        self, model: nn.Module, target: int, sources: Sequence[int], config: AdaptConfig
    ) -> None:
        self.model, self.target, self.sources, self.config = model, target, list(sources), config
        model.requires_grad_(False)
        params: list[nn.Parameter] = []
        self._hooks: list[Any] = []
        for bank in (m for m in model.modules() if isinstance(m, TemplateBank)):
            mask = torch.zeros_like(bank.logits)
            mask[target] = 1.0
            bank.logits.requires_grad_(True)
            self._hooks.append(bank.logits.register_hook(lambda g, m=mask: g * m))
            params.append(bank.logits)
        if config.stem:
            model.stem.requires_grad_(True)
            params += list(model.stem.parameters())
        self.discriminator: nn.Module | None = None
        if config.loss == "adversarial":
            width = model.heads[0].in_features
            self.discriminator = nn.Sequential(
                nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, 1)
            ).to(next(model.parameters()).device)
            params += list(self.discriminator.parameters())
        self.params = params
        self.optimizer = torch.optim.Adam(params, lr=config.lr)

    def trained_params(self) -> int:
        """Parameters that adaptation changes (target logit rows, stem, discriminator)."""
        rows = sum(
            m.logits[self.target].numel()
            for m in self.model.modules()
            if isinstance(m, TemplateBank)
        )
        stem = sum(p.numel() for p in self.model.stem.parameters()) if self.config.stem else 0
        disc = sum(p.numel() for p in self.discriminator.parameters()) if self.discriminator else 0
        return rows + stem + disc

    def run(
        self,
        sources: Sequence[Iterator[Any]],
        target: Iterator[Any],
        device: str,
        data: DataConfig | None = None,
    ) -> list[float]:
        """``config.steps`` steps; ``sources[i]`` yields batches of source task ``sources[i]``,
        ``target`` batches of target images (as ``data`` outputs them, default float). Returns the
        unsupervised loss per step."""
        data = data or DataConfig(root="-")
        history = []
        for _ in range(self.config.steps):
            images = [model_input(next(batches)[0], data, device) for batches in sources]
            target_images = model_input(next(target)[0], data, device)
            loss = self.loss(images, target_images)
            self.optimizer.zero_grad(set_to_none=True)
            (self.config.weight * loss).backward()
            _average_gradients(self.params)
            self.optimizer.step()
            history.append(float(loss.detach()))
        for hook in self._hooks:
            hook.remove()
        return history

    def loss(self, source_images: Sequence[Tensor], target_images: Tensor) -> Tensor:
        """The selected unsupervised loss of one step."""
        model = self.model
        model.train()
        target_features = model.features(target_images, self.target)
        if self.config.loss == "discrepancy":
            a, b = self.sources[0], self.sources[1]
            return discrepancy_loss(
                model.heads[a](target_features), model.heads[b](target_features)
            )
        model.eval()  # source statistics stay as trained
        with torch.no_grad():
            source_features = [
                model.features(x, task) for x, task in zip(source_images, self.sources, strict=True)
            ]
        model.train()
        if self.config.loss == "moment":
            return moment_loss(target_features, source_features)
        assert self.discriminator is not None
        domain_s = self.discriminator(torch.cat(source_features))
        domain_t = self.discriminator(_GradReverse.apply(target_features))
        return F.binary_cross_entropy_with_logits(
            domain_s, torch.ones_like(domain_s)
        ) + F.binary_cross_entropy_with_logits(domain_t, torch.zeros_like(domain_t))


def _average_gradients(params: Sequence[nn.Parameter]) -> None:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for param in params:
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= dist.get_world_size()
