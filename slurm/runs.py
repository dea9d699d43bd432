"""Read what a training run left in its directory: resolved config, results, step, scalars.

Everything here reads files that `blockmix train` writes (``config.yaml``, ``results.json``,
``checkpoints/latest`` and TensorBoard's event files under ``tb/``); nothing writes to a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = "config.yaml"  # train.trainer.CONFIG_FILE
RESULTS_FILE = "results.json"  # train.trainer.RESULTS_FILE
# Scalars shown as a run's latest metric, best first.
PROGRESS_TAGS = ("val/top1", "train/loss")


@dataclass(frozen=True)
class RunLabel:
    """Which row of a comparison a run belongs to.

    ``mode`` of a template variant is its matching mode; of a baseline it is ``compact`` when the
    baseline was narrowed for the compact pairing (``model.options.width_multiplier`` < 1), else
    None (the registered baseline, which the ``deeper`` variant is matched to).
    """

    model: str
    variant: str
    mode: str | None
    point: tuple[str, ...] = ()  # the sweep's grid point (``key=value``s) of this row

    @property
    def text(self) -> str:
        if self.variant == "baseline":
            text = "baseline" if self.mode is None else f"baseline ({self.mode}-matched)"
        else:
            text = f"tmix {self.mode}" if self.mode else "tmix"
        return f"{text} [{', '.join(short_point(self.point))}]" if self.point else text


def short_point(point: tuple[str, ...] | list[str]) -> list[str]:
    """A grid point's ``key=value``s with each key shortened to its last dotted part, unless two
    keys of the point share it (``model.mixing.init=identity`` -> ``init=identity``)."""
    keys = [item.partition("=")[0] for item in point]
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return [
        f"{short if last.count(short) == 1 else key}={item.partition('=')[2]}"
        for key, short, item in zip(keys, last, point, strict=True)
    ]


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's resolved config as a plain mapping, or None before the trainer wrote it."""
    path = run_dir / CONFIG_FILE
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """``results.json`` (written once, at the end of a finished run), or None."""
    path = run_dir / RESULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def label_of(config: dict[str, Any]) -> RunLabel:
    """The comparison row of a run, from its resolved config."""
    model = config["model"]
    mode = model.get("mode")
    if model["variant"] == "baseline":
        narrowed = float((model.get("options") or {}).get("width_multiplier", 1.0)) < 1.0
        mode = "compact" if narrowed else None
    return RunLabel(model["name"], model["variant"], mode)


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of the run's latest complete checkpoint, or None."""
    from train.checkpoint import find_latest

    latest = find_latest(run_dir / "checkpoints")
    return None if latest is None else int(latest[1]["step"])


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the run's TensorBoard event files: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = run_dir / "tb"
    if not tb.is_dir():
        return {}
    accumulator = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
        if not tag.startswith("hparams/")
    }


def progress(run_dir: Path) -> tuple[int | None, str]:
    """The run's latest step (checkpoint or logged scalar) and latest metric as ``tag=value``."""
    series = scalars(run_dir)
    steps = [points[-1][0] for points in series.values() if points]
    saved = checkpoint_step(run_dir)
    step = max([*steps, *([saved] if saved is not None else [])], default=None)
    for tag in PROGRESS_TAGS:
        if series.get(tag):
            at, value = series[tag][-1]
            return step, f"{tag}={value:.4g} @{at}"
    return step, ""
