"""Parameter groups, frozen templates through an optimizer step, counts."""

import torch

from train.models import build, count_params, freeze_templates, param_groups


def _small_tmix():
    torch.manual_seed(0)
    return build("resnet34", "tmix", width_multiplier=0.125, num_classes=10, num_tasks=2)


def test_param_groups_partition_trainable_parameters():
    model = _small_tmix()
    groups = param_groups(model)
    ids = [id(p) for group in groups.values() for p in group]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert [p.shape for p in groups["logits"]] == [(2, n, n) for n in (2, 3, 5, 2)]
    assert len(groups["templates"]) == len(groups["norm_templates"]) == 4
    assert len(groups["heads"]) == 4  # weight and bias of two task heads
    assert all(p.dim() == 1 for p in groups["bn"])
    assert all(p.dim() == 4 for p in groups["other"])  # stem and first-block convs
    baseline = param_groups(build("resnet18", width_multiplier=0.125))
    assert not baseline["templates"] and not baseline["logits"]
    assert len(baseline["bn"]) == 2 * (1 + 2 * 8 + 3)  # stem, 2 per block, 3 shortcuts


def test_frozen_templates_stay_frozen_through_an_optimizer_step():
    model = _small_tmix()
    freeze_templates(model)
    groups = param_groups(model)
    assert not groups["templates"] and not groups["norm_templates"]
    frozen = [torch.cat(s.bank.matrices(), 1).detach().clone() for s in model.stages]
    logits = [s.bank.logits.detach().clone() for s in model.stages]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
        optimizer.step()
    for stage, before, before_logits in zip(model.stages, frozen, logits, strict=True):
        assert torch.equal(torch.cat(stage.bank.matrices(), 1), before)
        assert all(matrix.grad is None for matrix in stage.bank.matrices())
        assert not torch.equal(stage.bank.logits, before_logits)


def test_count_params_trainable_only():
    model = _small_tmix()
    total = count_params(model)
    freeze_templates(model)
    templates = sum(m.numel() for s in model.stages for m in s.bank.matrices())
    assert count_params(model) == total - templates
    assert count_params(model, trainable_only=False) == total
