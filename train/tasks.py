"""The tasks of a run (README, "The method" §4) and their sub-configs: tasks, transfer and
adaptation.

Every run trains a list of tasks with one `train.trainer.Trainer`; a config without a ``tasks``
list is the run of one task on ``data.root`` with ``model.num_classes`` classes. With a list, task
t is model task t, reads ``tasks[t].root`` (absolute, or relative to ``data.root``: e.g. one domain
of `blockmix prepare demo`) with the ``data.*`` settings, has ``tasks[t].num_classes`` classes (0:
``model.num_classes``) and weighs its loss by ``loss_weight``. ``transfer.source`` starts the tasks
from a trained run's weights; ``adapt.target`` adds one unlabeled target domain, the last model
task, whose mixture logits adapt after the source tasks trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from data_pipeline.config import DataConfig
from train.errors import BlockmixError

if TYPE_CHECKING:
    from train.config import Config, ModelConfig

FINETUNE_MODES = ("h", "m", "b", "hm", "bm", "hb", "hbm", "all")
MODE_GROUPS = {"h": "heads", "m": "logits", "b": "bn"}
ADAPT_LOSSES = ("moment", "adversarial", "discrepancy")


@dataclass
class TaskConfig:
    """One task: its dataset folder, its class count (0: ``model.num_classes``) and its weight
    in the summed loss."""

    name: str = ""
    root: str = ""
    num_classes: int = 0
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


@dataclass(frozen=True)
class Task:
    """One model task of a run, resolved: ``classes_key`` is the config key of its class count."""

    name: str
    data: DataConfig
    num_classes: int
    loss_weight: float
    classes_key: str


def run_tasks(config: Config) -> list[Task]:
    """The model tasks of a run in order: the trained tasks, then the adaptation target."""
    data, mc = config.data, config.model
    if not config.tasks:
        name = Path(data.root).name or "task0"
        return [Task(name, data, mc.num_classes, 1.0, "model.num_classes")]
    tasks = [
        Task(
            t.name or Path(t.root).name,
            task_data(data, t.root),
            t.num_classes or mc.num_classes,
            t.loss_weight,
            f"tasks[{i}].num_classes",
        )
        for i, t in enumerate(config.tasks)
    ]
    target = config.adapt.target
    if target:
        source = tasks[config.adapt.source_task]
        tasks.append(Task(Path(target).name, task_data(data, target), source.num_classes, 0.0, ""))
    return tasks


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
    model: ModelConfig,
) -> None:
    """Raise a one-line `BlockmixError` naming the first wrong ``tasks``/``transfer``/``adapt``
    field (or ``model.num_tasks`` that contradicts the tasks list)."""
    variant = model.variant
    uses_tasks = transfer.source or adapt.target or multitask.independent
    if uses_tasks and not tasks:
        raise BlockmixError("transfer/adapt/multitask settings need a tasks list (tasks: [...])")
    for i, task in enumerate(tasks):
        if not task.root:
            raise BlockmixError(f"tasks[{i}].root is empty; set it to a dataset folder")
        if task.num_classes < 0 or task.loss_weight < 0:
            raise BlockmixError(
                f"tasks[{i}]: num_classes must be >= 1 (0: model.num_classes) and loss_weight >= 0"
            )
    model_tasks = len(tasks) + bool(adapt.target)
    if tasks and model.num_tasks not in (1, model_tasks):
        raise BlockmixError(
            f"model.num_tasks={model.num_tasks} but the tasks list makes {model_tasks} model "
            "task(s); drop model.num_tasks (a tasks list sets it)"
        )
    names = [task.name or Path(task.root).name for task in tasks]
    if len(set(names)) < len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise BlockmixError(f"two tasks are named {twice!r}; give each tasks[i].name its own")
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
