"""The one typed config tree of a training run, its named configs and its dotted overrides.

A run's config is the defaults below, updated by a named config (``train/configs/NAME.yaml``, which
holds only its differences from the defaults and may name a ``_base_`` config it extends: a name,
or a YAML path relative to the naming file; ``$BLOCKMIX_CONFIG_PATH`` adds folders), updated
by ``key=value`` overrides from the command line. Every layer is type-checked against the tree;
`validate` holds the checks across fields. The resolved tree is written into the run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data_pipeline.config import DataConfig
from train.errors import BlockmixError
from train.models.layers.templates import MixingConfig
from train.tasks import AdaptConfig, MultiTaskConfig, TaskConfig, TransferConfig, validate_tasks

CONFIG_DIR = Path(__file__).parent / "configs"
BASE_KEY = "_base_"
CONFIG_PATH_VARIABLE = "BLOCKMIX_CONFIG_PATH"


@dataclass
class RunConfig:
    """Where the run lives and its seed (model init, dropout; the data order has `data.seed`).

    ``allow_config_change`` lets a resume change settings that change what the checkpoint means
    (see `train.resume_config`); the change is recorded in the run directory.
    """

    dir: str = "runs/default"
    seed: int = 0
    allow_config_change: bool = False


@dataclass
class ModelConfig:
    """Arguments of `train.models.build`.

    ``mixing``: how template variants mix their templates (`MixingConfig`: coefficients, init,
    temperature, init_scale, identity_logit, rescale_templates). ``templates``: templates per
    bank, one int for all banks or a list with one per bank (``None``: one per position; the
    ``deeper``/``compact`` modes choose their own). ``options``: the family's sizes
    (`blockmix models` lists them), checked by name and type when the config is loaded.
    """

    name: str = "isometric"
    variant: str = "baseline"
    mode: str | None = None
    num_classes: int = 1000
    num_tasks: int = 1
    templates: Any = None
    mixing: MixingConfig = field(default_factory=MixingConfig)
    options: dict[str, Any] = field(default_factory=dict)

    def build_kwargs(self) -> dict[str, Any]:
        """The keywords of `train.models.build` beyond name, variant, classes, mode, tasks."""
        templates = self.templates
        if isinstance(templates, list):
            templates = tuple(templates)
        extra = {"templates": templates} if templates is not None else {}
        return {**self.options, **extra, "mixing": self.mixing}


@dataclass
class OptimConfig:
    """The optimizer: ``sgd`` (momentum), ``adamw`` or ``lamb``; ``lr`` is the peak rate.

    ``logits_lr_scale`` multiplies the rate of the mixture logits (their own group, never
    decayed); see README "Choosing the defaults" for how its default was measured.
    """

    name: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    logits_lr_scale: float = 1.0


@dataclass
class ScheduleConfig:
    """Linear warmup from 0 over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``."""

    warmup_steps: int = 0
    min_lr_ratio: float = 0.0


@dataclass
class TrainConfig:
    """The loop: length, batch, ZeRO, precision and regularisation.

    ``steps`` counts optimizer steps; when 0, ``epochs`` sets it. ``global_batch`` (0 means
    ``data.batch_size`` x world size) stays fixed across world sizes through gradient
    accumulation. ``precision`` "auto" is fp32 on the CPU and bf16 on a GPU. ``ema_decay`` 0
    disables the EMA of weights. ``eval_every`` 0 evaluates only at the end.
    """

    steps: int = 0
    epochs: int = 0
    global_batch: int = 0
    zero_stage: int = 0
    precision: str = "auto"
    grad_clip: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0
    log_every: int = 10
    eval_every: int = 0
    stop_after: int = 0
    progress: bool = True


@dataclass
class CheckpointConfig:
    """Sharded checkpoints every ``every`` steps and/or ``every_minutes`` (0 disables either)."""

    every: int = 1000
    every_minutes: float = 0.0
    keep: int = 3


@dataclass
class DeepSpeedConfig:
    """``extra`` keys are merged last into the generated DeepSpeed config (the escape hatch)."""

    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    """The whole run."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    tasks: list[TaskConfig] = field(default_factory=list)
    multitask: MultiTaskConfig = field(default_factory=MultiTaskConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)


CHOICES: dict[str, tuple[Any, ...]] = {
    "model.variant": ("baseline", "tmix"),
    "model.mode": (None, "deeper", "compact"),
    "optim.name": ("sgd", "adamw", "lamb"),
    "train.zero_stage": (0, 1, 2, 3),
    "train.precision": ("auto", "fp32", "bf16", "fp16", "bf16_full", "fp16_full"),
}


def validate(config: Config) -> None:
    """Raise a one-line `BlockmixError` naming the first field that is wrong."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            names = ", ".join(str(a) for a in allowed)
            raise BlockmixError(f"{key}={value!r} is not one of: {names}")
    if config.model.mode is not None and config.model.variant != "tmix":
        raise BlockmixError("model.mode applies to model.variant=tmix only; drop it or set tmix")
    _validate_model(config.model)
    if config.train.steps <= 0 and config.train.epochs <= 0:
        raise BlockmixError("train.steps or train.epochs must be > 0")
    positive = {
        "model.num_classes": config.model.num_classes,
        "model.num_tasks": config.model.num_tasks,
        "optim.lr": config.optim.lr,
        "optim.logits_lr_scale": config.optim.logits_lr_scale,
        "checkpoint.keep": config.checkpoint.keep,
        "train.log_every": config.train.log_every,
    }
    for key, value in positive.items():
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise BlockmixError(f"{key} must be a finite number > 0, got {value}")
    non_negative = {
        "train.steps": config.train.steps,
        "train.epochs": config.train.epochs,
        "train.global_batch": config.train.global_batch,
        "train.grad_clip": config.train.grad_clip,
        "train.label_smoothing": config.train.label_smoothing,
        "train.eval_every": config.train.eval_every,
        "train.stop_after": config.train.stop_after,
        "checkpoint.every": config.checkpoint.every,
        "checkpoint.every_minutes": config.checkpoint.every_minutes,
        "schedule.warmup_steps": config.schedule.warmup_steps,
        "optim.weight_decay": config.optim.weight_decay,
    }
    for key, value in non_negative.items():
        if not value >= 0:  # also NaN
            raise BlockmixError(f"{key} must be >= 0, got {value}")
    if not 0.0 <= config.train.ema_decay < 1.0:
        raise BlockmixError(f"train.ema_decay must be in [0, 1), got {config.train.ema_decay}")
    if config.train.ema_decay and config.train.zero_stage == 3:
        raise BlockmixError(
            "train.ema_decay needs train.zero_stage <= 2 (ZeRO-3 shards the weights)"
        )
    if not 0.0 <= config.schedule.min_lr_ratio <= 1.0:
        raise BlockmixError(
            f"schedule.min_lr_ratio must be in [0, 1], got {config.schedule.min_lr_ratio}"
        )
    config.data.validate()
    validate_tasks(config.tasks, config.multitask, config.transfer, config.adapt, config.model)


# Model settings with their own typed keys: ``model.options`` may not shadow them.
_MODEL_KEYS = ("variant", "num_classes", "num_tasks", "templates", "mixing")


def _validate_model(model: ModelConfig) -> None:
    """Family sizes by name and type, ``templates``, and the family's own checks."""
    from train import models

    if model.name not in models.list_models():
        raise BlockmixError(
            f"model.name={model.name!r} is not a registered model; valid: "
            f"{', '.join(models.list_models())}"
        )
    if model.templates is not None:
        values = model.templates if isinstance(model.templates, list) else [model.templates]
        if not values or not all(_is_int(v) and v >= 1 for v in values):
            raise BlockmixError(
                f"model.templates must be an int >= 1 or a list of them (one per bank), got "
                f"{model.templates!r}"
            )
        if model.mode is not None:
            raise BlockmixError(
                f"model.templates applies without model.mode (model.mode={model.mode} chooses "
                "the templates of its matched pair); drop one of them"
            )
    family = type(models.model_config(model.name))
    hints = typing.get_type_hints(family)
    names = [f.name for f in fields(family) if f.name not in _MODEL_KEYS]
    for key, value in model.options.items():
        if key in _MODEL_KEYS:
            raise BlockmixError(f"model.options.{key} shadows model.{key}: set model.{key}")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise BlockmixError(
                f"model.options.{key} is not a size of {model.name}{hint} "
                f"(valid: {', '.join(names)})"
            )
        if not _matches(value, hints[key]):
            raise BlockmixError(
                f"model.options.{key}={value!r} is not of type {_type_name(hints[key])}"
            )
    models.model_config(
        model.name, model.variant, model.num_classes, None, model.num_tasks, **model.build_kwargs()
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value fits a family field's annotation (int, float, bool, str, tuples
    given as lists, and unions of these)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        items = args[:1] * len(value) if args[-1:] == (Ellipsis,) else args
        return len(items) == len(value) and all(map(_matches, value, items))
    if hint is type(None):
        return value is None
    if hint is float:
        return _is_int(value) or isinstance(value, float)
    if hint is int:
        return _is_int(value)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def method_settings(config: Config) -> dict[str, Any]:
    """The template-mixture settings of a run, as ``results.json`` reports them."""
    return {
        "templates": config.model.templates,
        "mixing": dataclasses.asdict(config.model.mixing),
        "logits_lr_scale": config.optim.logits_lr_scale,
    }


def config_dirs() -> list[Path]:
    """Folders of named configs, searched in order: ``$BLOCKMIX_CONFIG_PATH`` (``os.pathsep``-
    separated), then ``train/configs``."""
    extra = os.environ.get(CONFIG_PATH_VARIABLE, "")
    return [Path(folder).expanduser() for folder in extra.split(os.pathsep) if folder] + [
        CONFIG_DIR
    ]


def named_configs() -> dict[str, Path]:
    """Name -> file of every named config; the first folder of `config_dirs` holding a name wins."""
    found: dict[str, Path] = {}
    for folder in config_dirs():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def load_config(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- named config (a name in ``train/configs`` or a YAML path) <- ``key=value``s."""
    config = merged_config(name, overrides)
    validate(config)
    return config


def merged_config(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """`load_config` before `validate`: each layer type-checked, the checks across fields not."""
    tree = OmegaConf.structured(Config)
    for path in config_chain(name):
        tree = _merge(tree, _read_yaml(path), f"config {path}")
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise BlockmixError(f"override {item!r} is not key=value (e.g. train.steps=100)")
        tree = _merge(tree, OmegaConf.from_dotlist([item]), f"override {item!r}")
    return OmegaConf.to_object(tree)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (readable back by `load_config`)."""
    Path(path).write_text(to_yaml(config))


def to_yaml(config: Config) -> str:
    """The resolved config as YAML text."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def flat_dict(config: Config) -> dict[str, Any]:
    """The config as ``{"train.steps": 100, ...}`` with scalar values (for HParams)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            out[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", OmegaConf.to_container(OmegaConf.structured(config)))
    return out


def config_chain(name: str) -> list[Path]:
    """The YAML files of a named config, its ``_base_`` first. A ``_base_`` that is a path is
    relative to the file naming it; otherwise it is a named config."""
    chain: list[Path] = []
    path = _resolve(name)
    while True:
        if path in chain:
            raise BlockmixError(f"config {path}: {BASE_KEY} chain loops back to itself")
        chain.insert(0, path)
        base = _read_yaml(path).get(BASE_KEY)
        if not base:
            return chain
        path = _resolve(str(base), relative_to=path.parent, where=f"config {path}: {BASE_KEY} ")


def _resolve(name: str, relative_to: Path | None = None, where: str = "") -> Path:
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if relative_to is not None and not path.is_absolute():
            path = relative_to / path
        if not path.is_file():
            raise BlockmixError(f"{where}config file {path} does not exist")
        return path.resolve()
    named = named_configs()
    if name not in named:
        folders = ", ".join(str(folder) for folder in config_dirs())
        raise BlockmixError(
            f"{where}unknown config {name!r}; named configs: {', '.join(named)} "
            f"(in {folders}; add folders with ${CONFIG_PATH_VARIABLE}) or a .yaml path"
        )
    return named[name]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise BlockmixError(f"config {path}: not valid YAML{where} ({problem})") from None
    if not isinstance(data, dict):
        raise BlockmixError(f"config {path}: the top level must be a mapping of sections")
    return data


def _merge(tree: Any, update: Any, where: str) -> Any:
    if isinstance(update, dict):
        update = {key: value for key, value in update.items() if key != BASE_KEY}
    try:
        return OmegaConf.merge(tree, update)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", "") or "?"
        message = str(error).splitlines()[0]
        raise BlockmixError(f"{where}: key {key}: {message}") from None
