"""The model registry: registered names, their default configs, one constructor."""

from __future__ import annotations

from train.errors import BlockmixError
from train.models.isometric import IsometricConfig
from train.models.matching import MODES, MatchingConfig, match
from train.models.mobilenet_v2 import MobileNetV2Config
from train.models.network import VARIANTS, ModelConfig, Network
from train.models.resnet import ResNetConfig

MODELS: dict[str, ModelConfig] = {
    "resnet18": ResNetConfig(block="basic", depths=(2, 2, 2, 2)),
    "resnet34": ResNetConfig(block="basic", depths=(3, 4, 6, 3)),
    "resnet50": ResNetConfig(block="bottleneck", depths=(3, 4, 6, 3)),
    "mobilenet_v2": MobileNetV2Config(),
    "isometric": IsometricConfig(),
}


def list_models() -> list[str]:
    """Registered model names."""
    return list(MODELS)


def model_config(
    name: str,
    variant: str = "baseline",
    num_classes: int | tuple[int, ...] = 1000,
    mode: str | None = None,
    num_tasks: int = 1,
    matching: MatchingConfig | None = None,
    **overrides: object,
) -> ModelConfig:
    """The config ``build`` would use; see ``build``."""
    if name not in MODELS:
        raise BlockmixError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    if variant not in VARIANTS:
        raise BlockmixError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    config = MODELS[name].replace(num_classes=num_classes, num_tasks=num_tasks, **overrides)
    if mode is None:
        return config.replace(variant=variant)
    if mode not in MODES:
        raise BlockmixError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    pair = match(config, mode, matching)
    return pair.tmix if variant == "tmix" else pair.baseline


def build(
    name: str,
    variant: str = "baseline",
    num_classes: int | tuple[int, ...] = 1000,
    mode: str | None = None,
    num_tasks: int = 1,
    matching: MatchingConfig | None = None,
    **overrides: object,
) -> Network:
    """Build registered model ``name``.

    ``variant``: ``baseline`` (independent blocks) or ``tmix`` (template mixtures). ``mode``:
    ``None`` (the registered sizes; tmix has one template per position), ``deeper`` or
    ``compact``: the two sides of a parameter-matched pair (``baseline`` may then be narrowed).
    ``overrides``: config fields (e.g. ``templates=4``, ``blocks=8``, ``width_multiplier=0.5``,
    ``mixing=MixingConfig(...)``), applied before matching. ``forward(x, task=0)``.
    """
    config = model_config(name, variant, num_classes, mode, num_tasks, matching, **overrides)
    return config.build()
