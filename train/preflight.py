"""What a run would be, without running it: the resolved model built on the meta device (its
parameters and FLOPs) and the generated DeepSpeed config. `blockmix train --dry-run` prints it;
`blockmix submit` checks it before anything waits in a queue."""

from __future__ import annotations

import json
from typing import Any

import torch

from train.config import Config


def preflight(config: Config, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """Parameters (before any freezing), FLOPs per image of one task, positions, and the
    DeepSpeed config for ``world_size`` ranks; a wrong setting raises a `BlockmixError`."""
    from train import models
    from train.engine import deepspeed_config
    from train.taskmodel import build_model

    with torch.device("meta"):
        model = build_model(config)
    ds = deepspeed_config(config, world_size, on_gpu)
    note = ""
    if on_gpu and not torch.cuda.is_available() and config.train.precision == "auto":
        note = "train.precision=auto: shown for a GPU without bf16; GPUs with bf16 use it"
    return {
        "model": config.model.name,
        "variant": config.model.variant,
        "mode": config.model.mode,
        "tasks": len(config.tasks) or config.model.num_tasks,
        "params": models.count_params(model),
        "flops": models.flops_per_image(model, config.data.image_size),
        "image_size": config.data.image_size,
        "world_size": world_size,
        "deepspeed": ds,
        "note": note,
    }


def describe(report: dict[str, Any]) -> str:
    """`preflight`'s report as the lines `--dry-run` prints."""
    ds = report["deepspeed"]
    mode = f" {report['mode']}" if report["mode"] else ""
    return "\n".join(
        [
            f"model      {report['model']} {report['variant']}{mode}, {report['tasks']} task(s)",
            f"params     {report['params']:,}",
            f"GFLOPs     {report['flops'] / 1e9:.6g} per {report['image_size']} px image",
            f"ranks      {report['world_size']}: micro-batch "
            f"{ds['train_micro_batch_size_per_gpu']} x accumulation "
            f"{ds['gradient_accumulation_steps']} = global batch {ds['train_batch_size']}",
            "deepspeed  " + json.dumps(ds, indent=2, sort_keys=True).replace("\n", "\n" + " " * 11),
            *([f"note       {report['note']}"] if report["note"] else []),
        ]
    )


def print_dry_run(config: Config, world_size: int) -> int:
    """`blockmix train --dry-run`: print the preflight report for this machine; exit code 0."""
    print(describe(preflight(config, world_size, torch.cuda.is_available())))
    print("dry run: nothing trained")
    return 0
