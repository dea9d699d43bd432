"""Transfer by mixture weights: source rows copied, fine-tune modes, frozen parts stay put."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train import models
from train.errors import BlockmixError
from train.tasks import FINETUNE_MODES
from train.transfer import apply_mode, copy_task, init_from_source

OPTIONS = dict(width=16, expansion=2, blocks=4, patch_size=4, head_width=32, templates=2)


def build(tasks: int, variant: str = "tmix", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build("isometric", variant, 10, None, tasks, **OPTIONS)


def test_init_from_source_copies_the_chosen_tasks_rows() -> None:
    source = build(3, seed=1)
    with torch.no_grad():
        source(torch.randn(4, 3, 32, 32), 2)  # distinct BN statistics for task 2
    state = source.state_dict()
    model = build(1, seed=2)
    init_from_source(model, state, 2)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model.eval()(x, 0), source.eval()(x, 2))
    with pytest.raises(BlockmixError, match="source has 3 task"):
        init_from_source(model, state, 3)


def test_copy_task_makes_two_tasks_equal() -> None:
    model = build(2).eval()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(model(x, 0), model(x, 1))
    copy_task(model, 0, 1)
    assert torch.equal(model(x, 0), model(x, 1))


@pytest.mark.parametrize("mode", FINETUNE_MODES)
def test_modes_train_exactly_their_groups(mode: str) -> None:
    model = build(1)
    groups = models.param_groups(model)
    trained = apply_mode(model, mode)
    wanted = {"h": "heads", "m": "logits", "b": "bn"}
    names = set(groups) if mode == "all" else {wanted[c] for c in mode}
    for name, params in groups.items():
        assert all(p.requires_grad == (name in names) for p in params), name
    assert trained == sum(p.numel() for n in names for p in groups[n])


def test_mode_m_trains_only_logits_and_frozen_parts_stay_unchanged() -> None:
    model = build(1)
    apply_mode(model, "m")
    before = {k: v.clone() for k, v in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    for _ in range(3):
        loss = F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == name.endswith("logits"), name


def test_mode_m_on_a_baseline_is_an_error() -> None:
    with pytest.raises(BlockmixError, match="trains no parameter"):
        apply_mode(build(1, "baseline"), "m")
