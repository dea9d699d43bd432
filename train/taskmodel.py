"""The model of a run's tasks (`train.tasks.run_tasks`): one network with a task per entry, or
independent single-task networks (the per-task baselines of ``multitask.independent``)."""

from __future__ import annotations

from torch import Tensor, nn

from train.config import Config
from train.tasks import run_tasks


class IndependentNetworks(nn.Module):
    """One single-task network per task: the independent per-task baselines."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.num_tasks = len(nets)

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        return self.nets[task](x)

    def features(self, x: Tensor, task: int = 0) -> Tensor:
        return self.nets[task].features(x)


def build_model(config: Config) -> nn.Module:
    """The run's model: a task per `run_tasks` entry in one network (or independent ones)."""
    from train import models

    mc = config.model
    if not config.tasks:
        return models.build(
            mc.name, mc.variant, mc.num_classes, mc.mode, mc.num_tasks, **mc.build_kwargs()
        )
    classes = [task.num_classes for task in run_tasks(config)]
    if config.multitask.independent:
        nets = [models.build(mc.name, "baseline", n, None, 1, **mc.build_kwargs()) for n in classes]
        return IndependentNetworks(nets)
    model = models.build(
        mc.name, mc.variant, tuple(classes), mc.mode, len(classes), **mc.build_kwargs()
    )
    if config.multitask.share_logits_from >= 0:
        models.share_logits_from(model, config.multitask.share_logits_from)
    return model
