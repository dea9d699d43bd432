"""Resuming with a changed config: meaningful settings must match unless explicitly allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.config import load_config, save_config
from train.errors import BlockmixError
from train.resume_config import CHANGES_FILE, check_resume

BASE = ["data.root=/data/a", "data.batch_size=8", "train.steps=10"]


def saved_run(tmp_path: Path, *overrides: str) -> tuple[Path, tuple[Path, dict]]:
    save_config(load_config("demo", [*BASE, *overrides]), tmp_path / "config.yaml")
    return tmp_path, (tmp_path / "checkpoints" / "step00000004", {"step": 4})


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ("data.batch_size=16", "data.batch_size"),
        ("data.root=/data/b", "data.root"),
        ("model.options.width=64", "model.options.width"),
        ("model.variant=tmix", "model.variant"),
        ("run.seed=3", "run.seed"),
        ("train.global_batch=32", "train.global_batch"),
    ],
)
def test_a_meaningful_change_is_refused_listing_the_key(
    tmp_path: Path, change: str, key: str
) -> None:
    run, latest = saved_run(tmp_path)
    with pytest.raises(BlockmixError, match=rf"step 4\).*{key}: .* -> ") as info:
        check_resume(load_config("demo", [*BASE, change]), run, latest, True)
    assert "\n" not in str(info.value) and "--allow-config-change" in str(info.value)


def test_safe_changes_stay_free(tmp_path: Path) -> None:
    run, latest = saved_run(tmp_path)
    free = ["train.steps=99", "train.log_every=1", "train.eval_every=5", "train.stop_after=7"]
    free += ["checkpoint.every=3", "train.progress=false", "optim.lr=0.05", f"run.dir={run}"]
    check_resume(load_config("demo", [*BASE, *free]), run, latest, True)
    assert not (run / CHANGES_FILE).exists()


def test_an_allowed_change_is_recorded_with_its_step(tmp_path: Path) -> None:
    run, latest = saved_run(tmp_path)
    allowed = load_config("demo", [*BASE, "data.batch_size=16", "run.allow_config_change=true"])
    check_resume(allowed, run, latest, True)
    entry = json.loads((run / CHANGES_FILE).read_text())
    assert entry["step"] == 4 and entry["changes"] == {"data.batch_size": [8, 16]}


def test_a_fresh_run_or_a_damaged_saved_config(tmp_path: Path) -> None:
    config = load_config("demo", [*BASE, "data.batch_size=16"])
    check_resume(config, tmp_path, None, True)  # nothing to resume: nothing to compare
    (tmp_path / "config.yaml").write_text("model: [unclosed")
    with pytest.raises(BlockmixError, match=r"config\.yaml is unreadable"):
        check_resume(config, tmp_path, (tmp_path, {"step": 1}), True)
