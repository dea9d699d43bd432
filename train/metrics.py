"""Training and evaluation metrics, synchronised across ranks, and step timing.

Accuracy and loss are torchmetrics metrics: each rank updates with its own samples and
``compute`` gathers them from every rank (a collective all ranks call at the same step). In
evaluation the loader's ``valid`` mask leaves out padding, so every sample counts exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from data_pipeline.config import DataConfig
from data_pipeline.loader import model_input


class ClassificationMetrics:
    """Loss, top-1 and top-5 accuracy over the samples seen since the last `reset`."""

    def __init__(self, num_classes: int, device: str | torch.device = "cpu") -> None:
        self.loss = MeanMetric().to(device)
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro").to(device)
        self.top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro").to(
            device
        )

    @torch.no_grad()
    def update(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        losses: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> None:
        """Add a batch: per-sample ``losses``; ``valid`` (bool) drops padding samples."""
        if valid is not None:
            logits, labels, losses = logits[valid], labels[valid], losses[valid]
        if labels.numel() == 0:
            return
        logits = logits.float()
        self.loss.update(losses.float())
        self.top1.update(logits, labels)
        self.top5.update(logits, labels)

    def compute(self) -> dict[str, float]:
        """``{"loss", "top1", "top5"}`` over every rank's samples (collective); top-k in %."""
        return {
            "loss": float(self.loss.compute()),
            "top1": 100.0 * float(self.top1.compute()),
            "top5": 100.0 * float(self.top5.compute()),
        }

    def reset(self) -> None:
        for metric in (self.loss, self.top1, self.top5):
            metric.reset()


@torch.no_grad()
def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable,
    metrics: ClassificationMetrics,
    device: str | torch.device,
    dtype: torch.dtype = torch.float32,
    data: DataConfig | None = None,
) -> dict[str, float]:
    """Run ``forward`` over ``(images, labels, valid)`` batches; the metrics over all ranks.

    ``data`` says how the batches come (``data.output``; default float images)."""
    metrics.reset()
    data = data or DataConfig(root="-")
    for images, labels, valid in batches:
        logits = forward(model_input(images, data, device, dtype)).float()
        labels = labels.to(logits.device)
        losses = F.cross_entropy(logits, labels, reduction="none")
        metrics.update(logits, labels, losses, valid.to(logits.device))
    return metrics.compute()


class StepTimer:
    """Wall time, data time and images of the optimizer steps since the last `window`."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self.steps = 0
        self.images = 0
        self.data_s = 0.0

    def add(self, images: int, data_s: float) -> None:
        """Count one optimizer step of ``images`` global images that waited ``data_s`` for data."""
        self.steps += 1
        self.images += images
        self.data_s += data_s

    def window(self) -> dict[str, float]:
        """``images_per_s``, ``step_time_s``, ``data_time_s`` (per step) since the last call."""
        elapsed = time.perf_counter() - self._start
        steps = max(self.steps, 1)
        out = {
            "images_per_s": self.images / elapsed if elapsed > 0 else 0.0,
            "step_time_s": elapsed / steps,
            "data_time_s": self.data_s / steps,
        }
        self.__init__()
        return out
