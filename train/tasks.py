"""The sub-configs of multi-task runs (METHOD.md §4): the tasks, transfer and adaptation.

A run with a non-empty ``tasks`` list trains every task jointly on one model (`train.multitask`):
task t is model task t, reads ``tasks[t].root`` (absolute, or relative to ``data.root``: e.g. one
domain of `blockmix prepare demo`) with the ``data.*`` settings, and weighs its loss by
``loss_weight``. ``transfer.source`` starts the tasks from a trained run's weights; ``adapt.target``
adds one unlabeled target domain whose mixture logits adapt after the source tasks trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.config import DataConfig
from train.errors import BlockmixError

FINETUNE_MODES = ("h", "m", "b", "hm", "bm", "hb", "hbm", "all")
MODE_GROUPS = {"h": "heads", "m": "logits", "b": "bn"}
ADAPT_LOSSES = ("moment", "adversarial", "discrepancy")


@dataclass
class TaskConfig:
    """One task: its dataset folder, its class count and its weight in the summed loss."""

    name: str = ""
    root: str = ""
    num_classes: int = 10
    loss_weight: float = 1.0


@dataclass
class MultiTaskConfig:
    """``share_logits_from``: mixed positions from this index on (bank rows in network order)
    use task 0's mixture logits for every task; -1 keeps all logits per task."""

    share_logits_from: int = -1
    independent: bool = False


@dataclass
class TransferConfig:
    """Start from ``source`` (a run directory or an exported ``.safetensors``); every task's
    logits, BN statistics and (same class count) head start from source task ``source_task``;
    ``mode`` picks what trains: h(eads), m(ixture logits), b(atch norm) or ``all``."""

    source: str = ""
    source_task: int = 0
    mode: str = "m"


@dataclass
class AdaptConfig:
    """Unsupervised adaptation to ``target`` (a folder like a task root) after the source tasks
    trained: the target task starts from source task ``source_task`` and only its mixture logits
    (and the stem with ``stem``) train for ``steps`` steps on ``loss`` x ``weight``."""

    target: str = ""
    source_task: int = 0
    loss: str = "moment"
    weight: float = 1.0
    steps: int = 100
    lr: float = 0.05
    stem: bool = False


def task_data(data: DataConfig, root: str) -> DataConfig:
    """``data`` reading ``root`` (relative paths are under ``data.root``)."""
    path = Path(root).expanduser()
    if not path.is_absolute():
        path = Path(data.root).expanduser() / path
    return dataclasses.replace(data, root=str(path))


def validate_tasks(
    tasks: list[TaskConfig],
    multitask: MultiTaskConfig,
    transfer: TransferConfig,
    adapt: AdaptConfig,
    variant: str,
) -> None:
    """Raise a one-line `BlockmixError` naming the first wrong ``tasks``/``transfer``/``adapt``
    field."""
    uses_tasks = transfer.source or adapt.target or multitask.independent
    if uses_tasks and not tasks:
        raise BlockmixError("transfer/adapt/multitask settings need a tasks list (tasks: [...])")
    for i, task in enumerate(tasks):
        if not task.root:
            raise BlockmixError(f"tasks[{i}].root is empty; set it to a dataset folder")
        if task.num_classes < 1 or task.loss_weight < 0:
            raise BlockmixError(f"tasks[{i}]: num_classes must be >= 1 and loss_weight >= 0")
    if transfer.mode not in FINETUNE_MODES:
        raise BlockmixError(
            f"transfer.mode={transfer.mode!r} is not one of: {', '.join(FINETUNE_MODES)}"
        )
    if transfer.source_task < 0:
        raise BlockmixError(f"transfer.source_task must be >= 0, got {transfer.source_task}")
    if adapt.loss not in ADAPT_LOSSES:
        raise BlockmixError(f"adapt.loss={adapt.loss!r} is not one of: {', '.join(ADAPT_LOSSES)}")
    if adapt.target:
        if variant != "tmix":
            raise BlockmixError("adapt.target needs model.variant=tmix (it adapts mixture logits)")
        if not 0 <= adapt.source_task < len(tasks):
            raise BlockmixError(f"adapt.source_task={adapt.source_task} is not a task index")
        if adapt.loss == "discrepancy" and len(tasks) < 2:
            raise BlockmixError("adapt.loss=discrepancy needs >= 2 source tasks (two heads)")
        if adapt.steps < 1 or adapt.lr <= 0:
            raise BlockmixError("adapt.steps must be >= 1 and adapt.lr > 0")
        if transfer.source:
            raise BlockmixError("use either transfer.source or adapt.target in one run")
    if multitask.independent and variant != "baseline":
        raise BlockmixError("multitask.independent=true needs model.variant=baseline")
