"""train.rundir: atomic writes, readers, and the task-mean series of old and new runs."""

from __future__ import annotations

import pytest

from train.rundir import RunDir, series


def test_results_and_config_are_replaced_whole_or_not_at_all(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.read_results() is None and run.read_config() is None and not run.finished
    run.write_results({"top1": 50.0})
    run.write_config("run:\n  seed: 3\n")
    assert run.read_results() == {"top1": 50.0} and run.finished
    assert run.read_config() == {"run": {"seed": 3}}
    with pytest.raises(TypeError):
        run.write_results({"top1": object()})  # fails while writing: the old file stays
    assert run.read_results() == {"top1": 50.0}
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml", "results.json"]


def test_a_run_with_only_per_task_tags_shows_their_mean(tmp_path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run = RunDir(tmp_path)
    writer = SummaryWriter(str(run.tensorboard))
    for step in (1, 2, 3):
        writer.add_scalar("train/a/loss", 1.0 * step, step)
        writer.add_scalar("val/a/top1", 10.0, step)
        writer.add_scalar("val/b/top1", 30.0, step)
        if step < 3:  # task b logged its loss at steps 1 and 2 only
            writer.add_scalar("train/b/loss", 3.0 * step, step)
        writer.add_scalar("train/lr", 0.1, step)
    writer.close()
    assert run.series("train/loss") == [(1, 2.0), (2, 4.0)]
    assert run.series("val/loss") == []
    assert run.progress() == (3, "val/top1=20 @3 (mean of 2 tasks)")


def test_a_plain_tag_is_taken_as_written() -> None:
    scalars = {"train/loss": [(1, 5.0)], "train/a/loss": [(1, 1.0)], "train/b/loss": [(1, 2.0)]}
    assert series(scalars, "train/loss") == [(1, 5.0)]
