"""Registry models: reference counts, one-hot mixtures = independent blocks, gradients,
state_dict round trip, multi-task forward. Small widths and 32 px inputs keep it fast."""

import pytest
import torch

from train.errors import BlockmixError
from train.models import build, count_params, list_models, model_config, summary

REFERENCE_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
}
SMALL = {"width_multiplier": 0.125, "num_classes": 10}


def _meta(name, variant="baseline", **kwargs):
    with torch.device("meta"):
        return build(name, variant, **kwargs)


@pytest.mark.parametrize("name", REFERENCE_COUNTS)
def test_baselines_have_reference_parameter_counts(name):
    assert count_params(_meta(name)) == REFERENCE_COUNTS[name]


@pytest.mark.parametrize("name", list_models())
def test_tmix_at_equal_depth_adds_exactly_its_logits(name):
    tmix = _meta(name, "tmix", num_tasks=2, num_classes=(1000, 7))
    baseline = _meta(name, num_tasks=2, num_classes=(1000, 7))
    logits = sum(2 * b["positions"] * b["templates"] for b in summary(tmix)["banks"].values())
    assert count_params(tmix) == count_params(baseline) + logits
    assert summary(tmix)["positions"] == summary(baseline)["positions"]


def _copy_as_one_hot(baseline, tmix):
    """Load ``baseline`` into ``tmix``: template l = block l's parameters, alpha = one-hot."""
    state = tmix.state_dict()
    state.update({k: v for k, v in baseline.state_dict().items() if k in state})
    tmix.load_state_dict(state)
    with torch.no_grad():
        for base_stage, stage in zip(baseline.stages, tmix.stages, strict=True):
            if stage.bank is None:
                continue
            views = stage.bank.template_views()
            for position, block in enumerate(base_stage.blocks):
                for name, value in block.params.items():
                    views[name][position].copy_(value)
            stage.bank.logits.copy_(1e4 * torch.eye(stage.bank.num_positions))


@pytest.mark.parametrize("name", list_models())
def test_one_hot_mixture_reproduces_independent_blocks(name):
    torch.manual_seed(0)
    baseline = build(name, **SMALL)
    tmix = build(name, "tmix", **SMALL)
    assert any(s.bank is not None and s.bank.num_templates > 1 for s in tmix.stages) or (
        name == "resnet18"
    )
    _copy_as_one_hot(baseline, tmix)
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)  # same dropout masks
    out_base = baseline(x)
    torch.manual_seed(1)
    out_tmix = tmix(x)
    torch.testing.assert_close(out_tmix, out_base)
    out_base.square().sum().backward()
    out_tmix.square().sum().backward()
    tmix_params = dict(tmix.named_parameters())
    for key, param in baseline.named_parameters():
        if key in tmix_params:
            torch.testing.assert_close(tmix_params[key].grad, param.grad)
    for base_stage, stage in zip(baseline.stages, tmix.stages, strict=True):
        if stage.bank is not None:
            grads = stage.bank.template_views(tuple(m.grad for m in stage.bank.matrices()))
            for position, block in enumerate(base_stage.blocks):
                for pname, param in block.params.items():
                    torch.testing.assert_close(grads[pname][position], param.grad)
    # Running statistics follow the same batches.
    last = max(i for i, stage in enumerate(tmix.stages) if stage.bank is not None)
    torch.testing.assert_close(
        tmix.stages[last].blocks[-1].norms["bn2"].running_mean,
        baseline.stages[last].blocks[-1].norms["bn2"].running_mean,
    )


def test_gradients_reach_templates_and_logits():
    torch.manual_seed(0)
    model = build("isometric", "tmix", width=16, expansion=2, blocks=4, templates=2, **SMALL)
    model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
    bank = model.stages[0].bank
    assert bank.templates.grad.abs().sum() > 0
    assert (bank.logits.grad[0].abs().sum(-1) > 0).all()
    assert all(p.grad is not None for p in model.parameters())


def test_state_dict_round_trip_keeps_function_and_statistics():
    torch.manual_seed(0)
    kwargs = {**SMALL, "num_tasks": 2, "num_classes": (10, 3)}
    model = build("resnet34", "tmix", **kwargs)
    x = torch.randn(2, 3, 32, 32)
    model(x, task=1).sum().backward()
    torch.manual_seed(1)
    restored = build("resnet34", "tmix", **kwargs)
    restored.load_state_dict(model.state_dict())
    model.eval()
    restored.eval()
    for task in (0, 1):
        assert torch.equal(restored(x, task), model(x, task))
    stats = model.stages[1].blocks[0].norms["bn1"].running_mean
    assert stats.shape[0] == 2 and not torch.equal(stats[0], stats[1])


def test_multi_task_heads_and_task_range():
    model = build("mobilenet_v2", "tmix", num_tasks=3, num_classes=(5, 6, 7), width_multiplier=0.25)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    assert [model(x, t).shape[1] for t in range(3)] == [5, 6, 7]
    with pytest.raises(IndexError):
        model(x, task=3)


def test_build_rejects_bad_input():
    with pytest.raises(BlockmixError, match="valid models"):
        build("resnet9")
    with pytest.raises(BlockmixError, match="valid"):
        build("resnet18", depth=3)
    with pytest.raises(BlockmixError, match="variant"):
        build("resnet18", "mixture")
    with pytest.raises(BlockmixError, match="one per task"):
        model_config("resnet18", num_classes=(10, 10), num_tasks=3)


@pytest.mark.parametrize("config", ["mnist", "mnist_multitask"])
def test_one_hot_mixture_of_the_mnist_study_networks_reproduces_independent_blocks(config):
    """The MNIST study's own networks (README: "MNIST study"): a template variant with one-hot
    mixtures over copies of the baseline's blocks computes the same outputs and gradients."""
    from train.config import load_config

    mc = load_config(config, ["model.templates=null"]).model
    kwargs = {**mc.build_kwargs(), "num_classes": mc.num_classes}
    torch.manual_seed(0)
    baseline = build(mc.name, "baseline", **kwargs)
    tmix = build(mc.name, "tmix", **kwargs)
    _copy_as_one_hot(baseline, tmix)
    x = torch.randn(4, 3, 32, 32)
    out_base, out_tmix = baseline(x), tmix(x)
    torch.testing.assert_close(out_tmix, out_base)
    out_base.logsumexp(1).sum().backward()
    out_tmix.logsumexp(1).sum().backward()
    bank = tmix.stages[0].bank
    grads = bank.template_views(tuple(m.grad for m in bank.matrices()))
    for position, block in enumerate(baseline.stages[0].blocks):
        for name, param in block.params.items():
            torch.testing.assert_close(grads[name][position], param.grad)
