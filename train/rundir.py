"""The one owner of a run directory's layout: its file names, atomic writes and readers.

``RUN/config.yaml`` (the resolved config), ``RUN/checkpoints/`` (`train.checkpoint`),
``RUN/tb/`` (TensorBoard event files), ``RUN/alpha.json`` and ``RUN/alpha.csv`` (mixture weights
of every task and bank), ``RUN/adapted.safetensors`` (after adaptation) and ``RUN/results.json``,
written last: a run is finished when it exists. ``config.yaml`` and ``results.json`` are written to
a temporary file that is flushed to disk and renamed, so a reader never sees half of one.

Every run logs its task mean under the plain scalar tags (``train/loss``, ``val/top1``, ...);
runs with a ``tasks`` list add ``train/<task>/*`` and ``val/<task>/*``. Runs written before the
trainers were merged have only the per-task tags: `RunDir.series` averages them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from data_pipeline.atomic import write_bytes_atomic
from train.untrusted import read_json, reading

# Scalars shown as a run's latest metric, best first.
PROGRESS_TAGS = ("val/top1", "train/loss")


class RunDir:
    """The directory ``path`` of one training run (it need not exist yet)."""

    CONFIG = "config.yaml"
    RESULTS = "results.json"
    CHECKPOINTS = "checkpoints"
    TENSORBOARD = "tb"
    ALPHA_FILES = ("alpha.json", "alpha.csv")
    ADAPTED = "adapted.safetensors"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def results_file(self) -> Path:
        return self.path / self.RESULTS

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def alpha_files(self) -> tuple[Path, ...]:
        return tuple(self.path / name for name in self.ALPHA_FILES)

    @property
    def adapted(self) -> Path:
        return self.path / self.ADAPTED

    def write_config(self, text: str) -> None:
        """Replace ``config.yaml`` atomically with ``text`` (the resolved config as YAML)."""
        write_bytes_atomic(self.config_file, text.encode())

    def write_results(self, results: dict[str, Any]) -> None:
        """Write ``results.json`` atomically: the run is finished once it exists."""
        write_bytes_atomic(self.results_file, (json.dumps(results, indent=2) + "\n").encode())

    def read_config(self) -> dict[str, Any] | None:
        """The resolved config as a plain mapping, or None before the trainer wrote it."""
        path = self.config_file
        if not path.is_file():
            return None
        with reading(path):
            return yaml.safe_load(path.read_text())

    def read_results(self) -> dict[str, Any] | None:
        """``results.json`` of a finished run, or None."""
        path = self.results_file
        return read_json(path) if path.is_file() else None

    @property
    def finished(self) -> bool:
        return self.results_file.is_file()

    def latest_checkpoint(self, checksums: bool = True) -> tuple[Path, dict[str, Any]] | None:
        """The newest verified checkpoint folder and its meta, or None (`find_latest`;
        ``checksums=False``: manifests and sizes only, a quick look)."""
        from train.checkpoint import find_latest

        return find_latest(self.checkpoints, checksums)

    def checkpoint_step(self) -> int | None:
        """The step of the newest checkpoint whose manifest and file sizes check out (no
        checksums: a quick look for `status`), or None."""
        latest = self.latest_checkpoint(checksums=False)
        return None if latest is None else int(latest[1]["step"])

    def scalars(self) -> dict[str, list[tuple[int, float]]]:
        """Every scalar series in the TensorBoard event files: tag -> [(step, value)]."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        if not self.tensorboard.is_dir():
            return {}
        accumulator = EventAccumulator(str(self.tensorboard), size_guidance={"scalars": 0})
        accumulator.Reload()
        return {
            tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]
            if not tag.startswith("hparams/")
        }

    def progress(self) -> tuple[int | None, str]:
        """The latest step (checkpoint or logged scalar) and latest metric as ``tag=value @step``;
        for a run of several tasks the metric is their mean, said as ``(mean of N tasks)``."""
        everything = self.scalars()
        steps = [points[-1][0] for points in everything.values() if points]
        saved = self.checkpoint_step()
        step = max([*steps, *([saved] if saved is not None else [])], default=None)
        for tag in PROGRESS_TAGS:
            points = series(everything, tag)
            if points:
                at, value = points[-1]
                tasks = len(task_tags(everything, tag))
                mean = f" (mean of {tasks} tasks)" if tasks > 1 else ""
                return step, f"{tag}={value:.4g} @{at}{mean}"
        return step, ""

    def series(self, tag: str) -> list[tuple[int, float]]:
        """The scalar ``section/name`` of the run (the task mean: see the module docstring)."""
        return series(self.scalars(), tag)


def task_tags(scalars: dict[str, list[tuple[int, float]]], tag: str) -> list[str]:
    """The per-task tags ``section/<task>/name`` of ``tag`` = ``section/name``."""
    section, _, name = tag.partition("/")
    pattern = re.compile(rf"^{re.escape(section)}/[^/]+/{re.escape(name)}$")
    return sorted(t for t in scalars if pattern.match(t))


def series(scalars: dict[str, list[tuple[int, float]]], tag: str) -> list[tuple[int, float]]:
    """``tag``'s points; where a run never wrote it, the mean of its per-task tags at the steps
    that all of them logged."""
    if scalars.get(tag):
        return scalars[tag]
    per_task = [dict(scalars[t]) for t in task_tags(scalars, tag)]
    if not per_task:
        return []
    steps = sorted(set.intersection(*(set(points) for points in per_task)))
    return [(step, sum(points[step] for points in per_task) / len(per_task)) for step in steps]
