"""`blockmix models` lists the registry; `blockmix params` compares a baseline with its
template variant (parameter-matched with --mode)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from train.models import ModelConfig

IMAGE_SIZE = 224


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `models` and `params`."""
    models = subparsers.add_parser("models", help="list the registered models")
    models.set_defaults(handler=_list_models)
    params = subparsers.add_parser(
        "params", help="baseline vs template variant: parameters, FLOPs, positions, templates"
    )
    params.add_argument("model", metavar="MODEL", help="a name from `blockmix models`")
    params.add_argument("--mode", help="parameter-matched pair: deeper or compact")
    params.add_argument("--num-classes", type=int, default=1000, help="classes (default 1000)")
    params.add_argument("--json", action="store_true", help="print one JSON object")
    params.set_defaults(handler=_params)


def _list_models(args: argparse.Namespace) -> int:
    import torch

    from train.models import count_params, list_models, model_config, summary

    print(f"{'model':<14}{'family':<20}{'params':>12}{'positions':>11}")
    for name in list_models():
        config = model_config(name)
        with torch.device("meta"):
            model = config.build()
        family = type(config).__name__.removesuffix("Config")
        print(f"{name:<14}{family:<20}{count_params(model):>12,}{summary(model)['positions']:>11}")
    return 0


def _describe(config: ModelConfig) -> dict[str, object]:
    import torch

    from train.models import count_params, flops_per_image, summary

    with torch.device("meta"):
        model = config.build()
    return {
        "params": count_params(model),
        "flops": flops_per_image(model, IMAGE_SIZE),
        **summary(model),
        "width_multiplier": config.width_multiplier,
        "channel_divisor": config.channel_divisor,
    }


def _params(args: argparse.Namespace) -> int:
    from train.errors import BlockmixError
    from train.models import match, model_config

    if args.num_classes < 1:
        raise BlockmixError(f"--num-classes must be >= 1, got {args.num_classes}")
    config = model_config(args.model, num_classes=args.num_classes)
    if args.mode is None:
        baseline, tmix = config, config.replace(variant="tmix")
    else:
        pair = match(config, args.mode)
        baseline, tmix = pair.baseline, pair.tmix
    sides = {"baseline": _describe(baseline), "tmix": _describe(tmix)}
    rel_diff = (sides["tmix"]["params"] - sides["baseline"]["params"]) / sides["baseline"]["params"]
    report = {
        "model": args.model,
        "mode": args.mode,
        "num_classes": args.num_classes,
        "image_size": IMAGE_SIZE,
        **sides,
        "rel_diff": rel_diff,
    }
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 0


def _table(report: dict) -> str:
    base, tmix = report["baseline"], report["tmix"]
    banks = " ".join(f"{b['templates']}/{b['positions']}" for b in tmix["banks"].values())
    rows = [
        ("trainable params", f"{base['params']:,}", f"{tmix['params']:,}"),
        ("relative diff", "", f"{report['rel_diff']:+.4%}"),
        ("GFLOPs/image", f"{base['flops'] / 1e9:.3f}", f"{tmix['flops'] / 1e9:.3f}"),
        ("positions", str(base["positions"]), str(tmix["positions"])),
        ("width multiplier", f"{base['width_multiplier']:g}", f"{tmix['width_multiplier']:g}"),
        ("templates/positions", "-", banks),
    ]
    mode = report["mode"] or "equal depth (one template per position)"
    lines = [
        f"{report['model']}, {mode}, {report['num_classes']} classes, "
        f"forward FLOPs at {report['image_size']} px",
        f"{'':<22}{'baseline':>14}  tmix",
    ]
    lines += [f"{name:<22}{left:>14}  {right}" for name, left, right in rows]
    return "\n".join(lines)
