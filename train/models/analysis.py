"""What a network costs and how it organised itself: FLOPs, shape summary, alpha matrices."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from train.errors import BlockmixError
from train.models.layers import Block, TemplateBank


def flops_per_image(model: nn.Module, image_size: int = 224) -> int:
    """Forward FLOPs of one image (batch 1, eval mode) by torch's FLOP counter.

    Works on the meta device. For template variants it includes the mixing contraction, which
    is paid once per batch, so it is an upper bound at larger batches."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def banks(model: nn.Module) -> dict[str, TemplateBank]:
    """Bank name (its module path) -> bank, in network order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, TemplateBank)}


def summary(model: nn.Module) -> dict[str, object]:
    """Block positions and, per bank, its templates and positions."""
    return {
        "positions": sum(isinstance(m, Block) for m in model.modules()),
        "banks": {
            name: {"templates": bank.num_templates, "positions": bank.num_positions}
            for name, bank in banks(model).items()
        },
    }


def alpha_matrices(model: nn.Module) -> dict[tuple[int, str], np.ndarray]:
    """(task, bank name) -> mixture weights, positions x templates (coefficients in linear mode)."""
    with torch.no_grad():
        return {
            (task, name): bank.alpha(task).detach().float().cpu().numpy()
            for name, bank in banks(model).items()
            for task in range(bank.logits.shape[0])
        }


def write_alpha(model: nn.Module, path: str | Path) -> Path:
    """Write the alpha matrices to ``path``: ``.json`` (one matrix per task and bank) or
    ``.csv`` (rows task, bank, position, template, alpha)."""
    path = Path(path)
    matrices = alpha_matrices(model)
    if path.suffix == ".json":
        data = [
            {"task": task, "bank": bank, "alpha": matrix.tolist()}
            for (task, bank), matrix in matrices.items()
        ]
        path.write_text(json.dumps(data, indent=1) + "\n")
    elif path.suffix == ".csv":
        with path.open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["task", "bank", "position", "template", "alpha"])
            for (task, bank), matrix in matrices.items():
                for (position, template), value in np.ndenumerate(matrix):
                    writer.writerow([task, bank, position, template, f"{value:.6g}"])
    else:
        raise BlockmixError(f"{path}: alpha export needs a .json or .csv file name")
    return path
