"""Consolidated fp32 weights out of a run's sharded checkpoint, and back into a plain model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from train.checkpoint import (
    SHARED,
    check_loads_safely,
    find_latest,
    load_safely,
    weights_only_loads,
)
from train.config import Config
from train.errors import BlockmixError
from train.models import Network
from train.rundir import RunDir
from train.untrusted import reading


def consolidated_state_dict(run_dir: str | Path, ema: bool = False) -> dict[str, torch.Tensor]:
    """The model's full fp32 state dict (parameters and buffers) at the run's latest checkpoint.

    ``ema`` returns the EMA weights instead (the run must have had ``train.ema_decay`` > 0).
    Files are read as tensors and plain data only: a run directory from elsewhere cannot run code.
    """
    checkpoints = RunDir(run_dir).checkpoints
    latest = find_latest(checkpoints)
    if latest is None:
        raise BlockmixError(f"{run_dir} has no checkpoint ({checkpoints}/latest is missing)")
    folder, meta = latest
    if ema:
        shared = load_safely(folder / SHARED)
        if "ema" not in shared:
            raise BlockmixError(f"{run_dir} was trained without train.ema_decay; drop --ema")
        state = shared["ema"]["shadow"]
    elif meta["zero_stage"] == 0:
        state = load_safely(folder / "mp_rank_00_model_states.pt")["module"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        check_loads_safely(folder)
        with weights_only_loads(folder):
            state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints), tag=folder.name)
    return {
        name: (t.float() if t.is_floating_point() else t).detach().contiguous().clone()
        for name, t in state.items()
    }


FORMATS = ("blockmix", "torchvision")


def export(
    run_dir: str | Path,
    out: str | Path,
    ema: bool = False,
    bake: bool = False,
    task: int = 0,
    fmt: str = "blockmix",
) -> Path:
    """Write the run's consolidated weights to a safetensors file that stands alone.

    The metadata holds the run's resolved config, the model's description (`load_model` needs
    nothing else) and the blockmix version. ``bake`` writes task ``task`` of a template variant
    as the plain network it computes; ``fmt="torchvision"`` renames a reference baseline's
    keys for torchvision's constructor.
    """
    from safetensors.torch import save_file

    from train import formats
    from train.config import load_config, to_yaml
    from train.taskmodel import build_model
    from train.textlog import version

    if fmt not in FORMATS:
        raise BlockmixError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    weights = consolidated_state_dict(run_dir, ema)
    config_file = RunDir(run_dir).config_file
    if not config_file.is_file():
        raise BlockmixError(f"{run_dir} has no {config_file.name}: not a run directory")
    with reading(config_file):  # a run directory from elsewhere: damage is one line
        config = load_config(str(config_file))
    model = build_model(config)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:  # a config.yaml that is not the checkpoint's
        detail = " ".join(str(error).split())[:200]
        raise BlockmixError(
            f"{run_dir}: the checkpoint does not fit the model of {config_file.name} ({detail})"
        ) from None
    metadata = {"run": str(run_dir), "config": to_yaml(config), "blockmix_version": version()}
    if bake:
        model = formats.bake(model, task)
        metadata["baked_task"] = str(task)  # ``config`` is the template run's
    metadata["format"] = fmt
    if isinstance(model, Network):
        metadata["model"] = formats.model_spec(model.config)
    if fmt == "torchvision":
        state = formats.torchvision_state_dict(model)
        metadata["torchvision_model"] = formats.torchvision_name(model.config)
    else:
        state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    out = Path(out)
    if out.is_dir():
        raise BlockmixError(f"--out {out} is a folder; name the FILE.safetensors to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(out)
    return out


def describe_export(path: str | Path) -> str:
    """One line about an exported file: format, model, tensors and parameters."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as file:
        metadata = file.metadata() or {}
        numel = sum(math.prod(file.get_slice(key).get_shape()) for key in file.keys())  # noqa: SIM118
        count = len(file.keys())
    what = metadata.get("torchvision_model") or ""
    if "model" in metadata and not what:
        model = json.loads(metadata["model"])
        what = f"{model['family'].removesuffix('Config')} {model['variant']}, {model['num_tasks']} task(s)"
    return (
        f"{path}: {metadata.get('format', 'blockmix')} format, {what}; {count} tensors, "
        f"{numel:,} values; metadata: {', '.join(sorted(metadata))}"
    )


def load_model(path: str | Path) -> Network:
    """The network of a blockmix-format file written by `export`, built from the file's own
    metadata and loaded (nothing else is needed: no run directory, no config)."""
    from safetensors import safe_open

    from train.formats import model_from_spec

    if not Path(path).is_file():
        raise BlockmixError(f"{path}: no such file; write one with `blockmix export`")
    with safe_open(str(path), "pt") as file:
        metadata = file.metadata() or {}
    if metadata.get("format") == "torchvision":
        name = metadata.get("torchvision_model", "the torchvision model")
        raise BlockmixError(f"{path} is in torchvision format: load it with torchvision's {name}")
    if "model" not in metadata:
        raise BlockmixError(
            f"{path} holds no model description (an older or per-task export); "
            "use load_weights with the run's config"
        )
    return load_weights(model_from_spec(metadata["model"]).build(), path).eval()


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors file written by `export` into a plain (non-DeepSpeed) model."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise BlockmixError(f"weights={path}: no such file; write one with `blockmix export`")
    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a bad file
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise BlockmixError(
            f"weights={path} is not a safetensors file ({first[:120]}); write one with "
            "`blockmix export`"
        ) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise BlockmixError(
            f"weights={path} do not fit model: {first}; use the run's config"
        ) from None
    return model


def evaluate_weights(config: Config, weights: str | Path) -> dict[str, float]:
    """Top-1, top-5 and loss of exported ``weights`` on the val split, without DeepSpeed."""
    from data_pipeline.loader import DaliLoader
    from train import models
    from train.metrics import ClassificationMetrics, evaluate

    mc = config.model
    model = models.build(
        mc.name, mc.variant, mc.num_classes, mc.mode, mc.num_tasks, **mc.build_kwargs()
    )
    load_weights(model, weights).eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = DaliLoader(config.data, train=False, device_id=0 if device == "cuda" else None)
    try:
        metrics = ClassificationMetrics(mc.num_classes, device)
        return evaluate(model.to(device), loader, metrics, device, data=config.data)
    finally:
        loader.close()
