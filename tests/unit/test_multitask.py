"""Per-task separation in the model library, shared logits, multi-task config and alpha image."""

from __future__ import annotations

import pytest
import torch

from train import models
from train.config import load_config
from train.errors import BlockmixError
from train.taskmodel import build_model

OPTIONS = dict(width=16, expansion=2, blocks=4, patch_size=4, head_width=32, templates=2)


def two_task_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build("isometric", "tmix", (10, 10), None, 2, **OPTIONS)


def test_changing_one_tasks_logits_leaves_the_other_task_unchanged() -> None:
    model = two_task_model().eval()
    x = torch.randn(4, 3, 32, 32)
    before0, before1 = model(x, 0), model(x, 1)
    with torch.no_grad():
        for bank in models.analysis.banks(model).values():
            bank.logits[0].add_(torch.randn_like(bank.logits[0]))
    assert torch.equal(model(x, 1), before1)
    assert not torch.allclose(model(x, 0), before0)


def test_bn_statistics_are_per_task() -> None:
    model = two_task_model().train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    model(torch.randn(8, 3, 32, 32) * 3 + 1, 1)
    after = model.state_dict()
    assert stats
    for key, old in stats.items():
        assert torch.equal(after[key][0], old[0]), key
    assert any(not torch.equal(after[k][1], v[1]) for k, v in stats.items())


def test_share_logits_from_position_uses_task_zero_there() -> None:
    model = two_task_model().eval()
    models.share_logits_from(model, 2)
    bank = next(iter(models.analysis.banks(model).values()))
    with torch.no_grad():  # tasks start from the same identity assignment: make them differ
        bank.logits[1].add_(torch.randn_like(bank.logits[1]))
    assert torch.equal(bank.alpha(1)[2:], bank.alpha(0)[2:])
    assert not torch.equal(bank.alpha(1)[:2], bank.alpha(0)[:2])
    x = torch.randn(2, 3, 32, 32)
    before = model(x, 1)
    with torch.no_grad():
        bank.logits[1, 2:].add_(5.0)  # task 1's own rows past the shared point do nothing
    assert torch.equal(model(x, 1), before)


def test_config_tasks_build_one_model_with_per_task_heads(tmp_path) -> None:
    config = load_config(
        "demo_multitask", [f"data.root={tmp_path}", "tasks=[{root: a, num_classes: 3}, {root: b}]"]
    )
    model = build_model(config)
    assert [h.out_features for h in model.heads] == [3, 10]
    baseline = load_config("demo_multitask_baseline", [f"data.root={tmp_path}"])
    tmix = models.count_params(
        build_model(load_config("demo_multitask", [f"data.root={tmp_path}"]))
    )
    independent = models.count_params(build_model(baseline))
    assert abs(independent - tmix) / tmix < 0.02


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["tasks=[{root: ''}]"], "tasks[0].root"),
        (["transfer.mode=x"], "transfer.mode"),
        (["adapt.target=photo", "adapt.source_task=7"], "adapt.source_task"),
        (["adapt.loss=nope"], "adapt.loss"),
        (["model.variant=baseline", "adapt.target=photo"], "adapt.target"),
        (["model.num_tasks=3"], "model.num_tasks=3 but the tasks list makes 4"),
        (["tasks=[{root: a, num_classes: -1}]"], "tasks[0]: num_classes"),
    ],
)
def test_bad_task_settings_are_one_line_errors(tmp_path, overrides, field) -> None:
    with pytest.raises(BlockmixError, match=field.replace("[", r"\[").replace("]", r"\]")):
        load_config("demo_multitask", [f"data.root={tmp_path}", *overrides])


def test_task_roots_are_relative_to_data_root(tmp_path) -> None:
    from data_pipeline.config import DataConfig
    from train.tasks import task_data

    data = DataConfig(root=str(tmp_path), batch_size=7)
    assert task_data(data, "photo").root == str(tmp_path / "photo")
    assert task_data(data, "/abs/x").root == "/abs/x"
    assert task_data(data, "photo").batch_size == 7


def test_run_tasks_of_a_plain_config_and_of_a_tasks_list(tmp_path) -> None:
    from train.tasks import run_tasks

    (single,) = run_tasks(load_config("demo", [f"data.root={tmp_path / 'digits'}"]))
    assert (single.name, single.num_classes, single.data.root) == (
        "digits",
        10,
        str(tmp_path / "digits"),
    )
    overrides = [
        f"data.root={tmp_path}",
        "model.num_classes=7",
        "tasks=[{root: a}, {root: b, num_classes: 3}]",
    ]
    config = load_config("demo_multitask", [*overrides, "adapt.target=c", "adapt.source_task=1"])
    tasks = run_tasks(config)
    assert [(t.name, t.num_classes) for t in tasks] == [("a", 7), ("b", 3), ("c", 3)]
    assert tasks[1].classes_key == "tasks[1].num_classes"
    assert [h.out_features for h in build_model(config).heads] == [7, 3, 3]
