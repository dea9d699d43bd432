"""Exported networks in other shapes: a template variant baked into the plain network it computes,
a baseline under torchvision's key names, and a model config as text for a file's metadata.

`bake` writes the mixed weights of each bank position into a baseline of independent blocks (one
task, same depth and widths), so the result loads without the bank and gives the same outputs.
`torchvision_state_dict` renames a reference-sized ResNet-18/34/50 or MobileNetV2 baseline's
state to the keys (and BN buffers) torchvision's constructors load with ``strict=True``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable

import torch
from torch import Tensor, nn

from train.errors import BlockmixError
from train.models import MixingConfig, ModelConfig, Network
from train.models.registry import MODELS

FAMILIES: dict[str, type[ModelConfig]] = {
    type(config).__name__: type(config) for config in MODELS.values()
}
BLOCK_KEY = re.compile(r"stages\.(\d+)\.(first|blocks\.(\d+))\.(params|norms)\.(\w+?)(?:\.(\w+))?$")


def model_spec(config: ModelConfig) -> str:
    """``config`` as JSON text (family and fields), for `model_from_spec`."""
    return json.dumps({"family": type(config).__name__, **dataclasses.asdict(config)})


def model_from_spec(text: str) -> ModelConfig:
    """The model config that `model_spec` wrote."""
    data = json.loads(text)
    family = FAMILIES.get(data.pop("family", None))
    if family is None:
        raise BlockmixError(
            f"model family of {text[:60]!r} is unknown; valid: {', '.join(FAMILIES)}"
        )
    defaults = family()
    fields = {}
    for name, value in data.items():
        current = getattr(defaults, name)
        fields[name] = (
            type(current)(**_tuples(value)) if dataclasses.is_dataclass(current) else _tuples(value)
        )
    return family(**fields)


@torch.no_grad()
def bake(model: nn.Module, task: int = 0) -> Network:
    """The baseline network (independent blocks, task ``task`` only) that ``model`` computes for
    ``task``: each bank position's mixed parameters become that block's own parameters."""
    if not isinstance(model, Network):
        raise BlockmixError(
            "--bake needs one shared network; independent per-task networks are plain already"
        )
    if not 0 <= task < model.num_tasks:
        raise BlockmixError(
            f"--task {task} is out of range: the model has {model.num_tasks} task(s)"
        )
    config = model.config
    plain = config.replace(
        variant="baseline", templates=None, num_tasks=1, num_classes=config.head_classes()[task]
    ).build()
    source = model.state_dict()
    mixed = {
        index: stage.bank(task)
        for index, stage in enumerate(model.stages)
        if stage.bank is not None
    }
    state = {}
    for key in plain.state_dict():
        if key.startswith("heads.0."):
            state[key] = source[f"heads.{task}." + key.removeprefix("heads.0.")]
        elif key in source:
            value = source[key]
            state[key] = (
                value[task : task + 1] if key.endswith(("running_mean", "running_var")) else value
            )
        else:  # a block parameter of a banked stage: stages.S.blocks.J.params.NAME
            stage, _, position, _, name, _ = BLOCK_KEY.match(key).groups()
            state[key] = mixed[int(stage)][int(position)][name]
    plain.load_state_dict({key: value.detach().clone() for key, value in state.items()})
    return plain.eval()


def torchvision_name(config: ModelConfig) -> str:
    """Which torchvision constructor builds the same network as baseline ``config``."""
    plain = config.replace(num_classes=1000, num_tasks=1, mixing=MixingConfig())
    for name in ("resnet18", "resnet34", "resnet50", "mobilenet_v2"):
        if plain == MODELS[name] and config.num_tasks == 1:
            return name
    raise BlockmixError(
        "--format torchvision needs a one-task baseline (or --bake of a one-position-per-template "
        "variant) of the reference resnet18, resnet34, resnet50 or mobilenet_v2 sizes; "
        f"this model is {type(config).__name__}, variant {config.variant}, {config.num_tasks} task(s)"
    )


def torchvision_state_dict(model: Network) -> dict[str, Tensor]:
    """``model``'s state under torchvision's key names (``torchvision.models.NAME(num_classes=N)``
    loads it with ``strict=True``), with the BN ``num_batches_tracked`` counters it expects."""
    name = torchvision_name(model.config)
    rename = _resnet_key if name.startswith("resnet") else _mobilenet_key(model)
    state: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        new = rename(key)
        state[new] = value[0] if key.endswith(("running_mean", "running_var")) else value
        if new.endswith(".running_mean"):
            state[new.replace("running_mean", "num_batches_tracked")] = torch.tensor(0)
    return {key: value.detach().contiguous().clone() for key, value in state.items()}


def _resnet_key(key: str) -> str:
    layers = {"conv1": "conv1", "conv2": "conv2", "conv3": "conv3", "down": "downsample.0"}
    norms = {"bn1": "bn1", "bn2": "bn2", "bn3": "bn3", "down_bn": "downsample.1"}
    stem = {
        "stem.conv.weight": "conv1.weight",
        "heads.0.weight": "fc.weight",
        "heads.0.bias": "fc.bias",
    }
    if key in stem:
        return stem[key]
    if key.startswith("stem.norm."):
        return "bn1." + key.removeprefix("stem.norm.")
    stage, _, position, kind, name, buffer = BLOCK_KEY.match(key).groups()
    prefix = f"layer{int(stage) + 1}.{0 if position is None else int(position) + 1}"
    return prefix + "." + _block_entry(kind, name, buffer, layers, norms)


def _mobilenet_key(model: Network) -> Callable[[str], str]:
    numbers: dict[tuple[int, int | None], int] = {}
    for s, stage in enumerate(model.stages):
        numbers[(s, None)] = len(numbers) + 1
        for j in range(len(stage.blocks)):
            numbers[(s, j)] = len(numbers) + 1
    neck = len(numbers) + 1
    expanding = {"expand": "conv.0.0", "depthwise": "conv.1.0", "project": "conv.2"}
    expanding_norms = {"bn1": "conv.0.1", "bn2": "conv.1.1", "bn3": "conv.3"}
    plain = {"depthwise": "conv.0.0", "project": "conv.1"}
    plain_norms = {"bn2": "conv.0.1", "bn3": "conv.2"}

    def rename(key: str) -> str:
        for ours, theirs in (("stem.conv.", "features.0.0."), ("stem.norm.", "features.0.1."),
                             ("neck.conv.", f"features.{neck}.0."), ("neck.norm.", f"features.{neck}.1."),
                             ("heads.0.", "classifier.1.")):  # fmt: skip
            if key.startswith(ours):
                return theirs + key.removeprefix(ours)
        stage, _, position, kind, name, buffer = BLOCK_KEY.match(key).groups()
        block = model.stages[int(stage)]
        spec = (block.first if position is None else block.blocks[int(position)]).spec
        layers, norms = (expanding, expanding_norms) if spec.expands else (plain, plain_norms)
        number = numbers[(int(stage), None if position is None else int(position))]
        return f"features.{number}." + _block_entry(kind, name, buffer, layers, norms)

    return rename


def _block_entry(
    kind: str, name: str, buffer: str | None, layers: dict[str, str], norms: dict[str, str]
) -> str:
    """A block's ``params.NAME`` / ``norms.BN.BUFFER`` entry as torchvision's ``LAYER.FIELD``."""
    if kind == "norms":
        return f"{norms[name]}.{buffer}"
    if name in layers:
        return f"{layers[name]}.weight"
    norm, field = name.rsplit("_", 1)
    return f"{norms[norm]}.{field}"


def _tuples(value: object) -> object:
    """JSON lists back to the tuples of frozen configs (nested), mappings kept."""
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    return value
