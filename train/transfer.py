"""Transfer by mixture weights (README, "The method" §4): source weights in, one task's rows copied
to another, and the fine-tune modes that choose what trains.

Per-task tensors are the mixture logits (tasks, L, K), the BN running statistics (tasks, C) and
the heads ``heads.<t>.*``; everything else (templates, unshared layers) is shared by all tasks.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from train.config import Config
from train.errors import BlockmixError
from train.models import count_params, param_groups
from train.tasks import MODE_GROUPS

PER_TASK_ROWS = ("logits", "running_mean", "running_var")
HEAD = re.compile(r"^heads\.(\d+)\.")


def prepare_tasks(model: nn.Module, config: Config) -> int:
    """Before the engine is built: start from ``transfer.source`` (if set) and train only
    ``transfer.mode``'s parts; the adaptation target starts as a copy of ``adapt.source_task``.
    Returns the number of trained parameters."""
    transfer = config.transfer
    if transfer.source:
        init_from_source(model, source_state(transfer.source), transfer.source_task)
        trained = apply_mode(model, transfer.mode)
    else:
        trained = count_params(model)
    if config.adapt.target:  # copied again from the trained source when adaptation starts
        copy_task(model, config.adapt.source_task, len(config.tasks))
    return trained


def source_state(source: str) -> dict[str, Tensor]:
    """The fp32 state dict of a run directory (its latest checkpoint) or a ``.safetensors``."""
    path = Path(source).expanduser()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if not path.is_file():
            raise BlockmixError(f"transfer.source={source}: no such file")
        return load_file(str(path))
    if not path.is_dir():
        raise BlockmixError(f"transfer.source={source}: not a run directory or .safetensors file")
    from train.export import consolidated_state_dict

    return consolidated_state_dict(path)


@torch.no_grad()
def init_from_source(model: nn.Module, source: dict[str, Tensor], source_task: int) -> None:
    """Shared tensors from ``source`` as they are; every task's logits, BN statistics and head
    (where the class count matches; else it stays freshly initialised) from ``source_task``."""
    for key, value in model.state_dict().items():
        head = HEAD.match(key)
        name = HEAD.sub(f"heads.{source_task}.", key) if head else key
        if name not in source:
            raise BlockmixError(
                f"transfer.source has no {name!r}: it was trained with another model config"
            )
        src = source[name].to(value.dtype)
        if key.rsplit(".", 1)[-1] in PER_TASK_ROWS and src.dim() == value.dim():
            if source_task >= src.shape[0]:
                raise BlockmixError(
                    f"transfer.source_task={source_task}: the source has {src.shape[0]} task(s)"
                )
            src = src[source_task].expand_as(value)
        if head and src.shape != value.shape:
            continue
        if src.shape != value.shape:
            raise BlockmixError(
                f"transfer.source {name}: shape {tuple(src.shape)} does not fit "
                f"{tuple(value.shape)}; use the source run's model settings"
            )
        value.copy_(src)


@torch.no_grad()
def copy_task(model: nn.Module, source: int, target: int) -> None:
    """Task ``target`` starts as task ``source``: logits, BN statistics and head."""
    state = model.state_dict()
    for key, value in state.items():
        if key.rsplit(".", 1)[-1] in PER_TASK_ROWS:
            value[target].copy_(value[source])
        elif HEAD.match(key) and int(HEAD.match(key).group(1)) == target:
            src = state[HEAD.sub(f"heads.{source}.", key)]
            if src.shape == value.shape:
                value.copy_(src)


def apply_mode(model: nn.Module, mode: str) -> int:
    """Train only the parts ``mode`` names (``all``: everything); return the trained count.

    Letters: h = heads, m = mixture logits, b = BN gamma/beta of unshared layers. BN running
    statistics are buffers: the trained task re-estimates them in every mode."""
    if mode == "all":
        model.requires_grad_(True)
    else:
        groups = param_groups(model)
        model.requires_grad_(False)
        for letter in mode:
            for param in groups[MODE_GROUPS[letter]]:
                param.requires_grad_(True)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trained == 0:
        raise BlockmixError(
            f"transfer.mode={mode} trains no parameter of this model (mode m needs tmix)"
        )
    return trained
