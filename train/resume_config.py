"""Resuming a run with another config: settings that change what its checkpoint means must match
the run's ``config.yaml``, unless the user allows the change, which is then recorded.

Meaningful: the model, the training data and its order (root, split, batch, image size, seed),
the global batch, ZeRO stage, EMA, optimizer kind, run seed and the task settings. Everything else
(logging, evaluation and checkpoint cadence, ``train.steps``/``epochs``/``stop_after``, progress,
learning rate and schedule) stays free to change on resume.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from train.config import Config
from train.errors import BlockmixError
from train.rundir import RunDir

CHANGES_FILE = "config_changes.jsonl"
MEANINGFUL = (
    "model",
    "data.root",
    "data.train_split",
    "data.batch_size",
    "data.image_size",
    "data.seed",
    "data.drop_last",
    "train.global_batch",
    "train.zero_stage",
    "train.ema_decay",
    "optim.name",
    "run.seed",
    "tasks",
    "multitask",
    "transfer",
    "adapt",
)


def check_resume(
    config: Config, run_dir: str | Path, latest: tuple[Path, dict[str, Any]] | None, is_main: bool
) -> None:
    """Raise a `BlockmixError` listing the meaningful settings that differ from the run's saved
    config when resuming from ``latest`` (a `find_latest` result); with
    ``run.allow_config_change`` record them in ``RUN/config_changes.jsonl`` instead."""
    saved_path = RunDir(run_dir).config_file
    if latest is None or not saved_path.is_file():
        return
    step = int(latest[1]["step"])
    changes = changed_settings(
        _read_saved(saved_path), _flat(OmegaConf.to_container(OmegaConf.structured(config)))
    )
    if not changes:
        return
    listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
    if not config.run.allow_config_change:
        raise BlockmixError(
            f"resuming {run_dir} (step {step}) with settings that change what its checkpoint "
            f"means: {listed}; use the run's {RunDir.CONFIG}, a new run.dir, or pass "
            "--allow-config-change (run.allow_config_change=true) to record the change and go on"
        )
    if is_main:
        entry = {"step": step, "time": time.time(), "changes": changes}
        with open(Path(run_dir) / CHANGES_FILE, "a") as handle:
            handle.write(json.dumps(entry) + "\n")


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, list[Any]]:
    """``{key: [saved, current]}`` of the meaningful flat keys whose values differ."""
    keys = sorted(k for k in {*saved, *current} if _meaningful(k))
    return {k: [saved.get(k), current.get(k)] for k in keys if saved.get(k) != current.get(k)}


def _meaningful(key: str) -> bool:
    return any(key == prefix or key.startswith(f"{prefix}.") for prefix in MEANINGFUL)


def _read_saved(path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise BlockmixError(
            f"{path} is unreadable ({type(error).__name__}); restore it from the run's first start"
        ) from None
    if not isinstance(tree, dict):
        raise BlockmixError(f"{path} is not a config mapping; restore it")
    return _flat(tree)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model.options.width": 32, "tasks": "[...]", ...}``: nested mappings flattened,
    lists compared as a whole."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = (
                json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
            )
    return out
