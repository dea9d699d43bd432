"""`blockmix train`, `blockmix eval` and `blockmix export`: parse, build, run, close."""

from __future__ import annotations

import argparse
import json
import os
import signal

from train.errors import BlockmixError

OVERRIDES_HELP = (
    "dotted overrides such as train.steps=100 run.dir=runs/x; every key and its value: "
    "`blockmix config show CONFIG`"
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="train a named config (resumes an existing run)")
    train.add_argument("config", help="a named config (train/configs) or a YAML file")
    train.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    train.add_argument("--nproc", type=int, default=0, help="spawn N local ranks")
    train.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume although settings that change what the checkpoint means differ (recorded)",
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve the config, build the model on the meta device and print parameters, "
        "FLOPs and the DeepSpeed config; train nothing",
    )
    train.set_defaults(handler=_train)
    evaluate = subparsers.add_parser("eval", help="evaluate exported weights on the val split")
    evaluate.add_argument("config", help="the config the weights were trained with")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="weights=FILE, ...")
    evaluate.set_defaults(handler=_eval)
    export = subparsers.add_parser("export", help="consolidated fp32 weights of a run")
    export.add_argument("run", help="the run directory")
    export.add_argument("--out", required=True, help="FILE.safetensors to write")
    export.add_argument("--ema", action="store_true", help="export the EMA weights")
    export.add_argument(
        "--format",
        choices=("blockmix", "torchvision"),
        default="blockmix",
        help="torchvision: a reference resnet18/34/50 or mobilenet_v2 baseline under "
        "torchvision's key names (default blockmix)",
    )
    export.add_argument(
        "--bake",
        action="store_true",
        help="a template variant as the plain network of independent blocks it computes",
    )
    export.add_argument("--task", type=int, default=0, help="the task --bake writes (default 0)")
    export.set_defaults(handler=_export)


def _train(args: argparse.Namespace) -> int:
    from train.config import load_config
    from train.distributed import from_environment, launch_local, teardown

    if args.allow_config_change:
        args.overrides.append("run.allow_config_change=true")
    config = load_config(args.config, args.overrides)  # a bad key fails here, once
    if args.dry_run:
        from train.preflight import print_dry_run

        return print_dry_run(config, args.nproc or from_environment().world_size)
    if args.nproc:
        return launch_local(args.nproc, ["train", args.config, *args.overrides])
    os.environ.setdefault("DS_ACCELERATOR", _accelerator())
    from train.trainer import Trainer

    trainer, finished = None, False
    try:
        trainer = Trainer(config, from_environment())
        results = trainer.fit()
        finished = True
    finally:  # after an error, leave without waiting for ranks that may be gone
        if trainer is not None:
            trainer.close(clean=finished)
        else:
            teardown(clean=False)
    if results is None and trainer.interrupted_by_signal:
        return 128 + signal.SIGTERM
    return 0


def _eval(args: argparse.Namespace) -> int:
    from train.config import load_config

    weights = [o.partition("=")[2] for o in args.overrides if o.startswith("weights=")]
    if len(weights) != 1 or not weights[0]:
        raise BlockmixError("blockmix eval needs exactly one weights=FILE argument")
    overrides = [o for o in args.overrides if not o.startswith("weights=")]
    config = load_config(args.config, overrides)
    os.environ.setdefault("DS_ACCELERATOR", _accelerator())
    from train.export import evaluate_weights

    print(json.dumps(evaluate_weights(config, weights[0])))
    return 0


def _export(args: argparse.Namespace) -> int:
    from train.export import describe_export, export

    print(describe_export(export(args.run, args.out, args.ema, args.bake, args.task, args.format)))
    return 0


def _accelerator() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
