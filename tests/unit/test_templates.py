"""Template banks: one batched contraction equals the naive per-layer sum; init choices;
per-task BatchNorm statistics."""

from dataclasses import replace

import pytest
import torch

from train.errors import BlockmixError
from train.models import list_models, model_config
from train.models.layers import MixingConfig, TaskBatchNorm2d, TemplateBank
from train.models.resnet import BasicBlock


def _bank(coefficients="softmax", init=None, templates=3, positions=4, tasks=2):
    torch.manual_seed(0)
    mixing = MixingConfig(coefficients=coefficients, init=init, init_scale=1.0)
    return TemplateBank(BasicBlock(4, 4), templates, positions, tasks, mixing)


def _mix_and_grads(bank, mix, task):
    """Mixed parameters of ``task`` and the gradients of a fixed random loss."""
    bank.zero_grad()
    mixed = mix(task)
    generator = torch.Generator().manual_seed(1)
    loss = sum(
        (p * torch.randn(p.shape, generator=generator)).sum()
        for params in mixed
        for p in params.values()
    )
    loss.backward()
    return mixed, bank.templates.grad.clone(), bank.logits.grad.clone()


@pytest.mark.parametrize("templates", [1, 3])
@pytest.mark.parametrize("coefficients", ["softmax", "linear"])
def test_batched_mixing_equals_naive_sum(coefficients, templates):
    bank = _bank(coefficients, templates=templates)
    for task in range(2):
        fast, fast_t, fast_l = _mix_and_grads(bank, bank.forward, task)
        slow, slow_t, slow_l = _mix_and_grads(bank, bank.mix_naive, task)
        assert len(fast) == len(slow) == 4
        for f, s in zip(fast, slow, strict=True):
            assert f.keys() == s.keys() == bank.shapes.keys()
            for name in f:
                assert f[name].shape == bank.shapes[name]
                torch.testing.assert_close(f[name], s[name])
        torch.testing.assert_close(fast_t, slow_t)
        torch.testing.assert_close(fast_l, slow_l)
        assert fast_l[1 - task].abs().sum() == 0
        # A one-template softmax is constant: its logits get exactly zero gradient.
        assert (fast_l[task].abs().sum() > 0) == (coefficients == "linear" or templates > 1)


def test_template_views_share_storage_and_init_like_baseline():
    bank = _bank()
    views = bank.template_views()
    assert views["conv1"].shape == (3, 4, 4, 3, 3)
    assert torch.equal(views["bn1_weight"], torch.ones(3, 4))
    assert torch.equal(views["bn2_bias"], torch.zeros(3, 4))
    # He-normal, fan-out: std sqrt(2 / (4 * 9)).
    assert 0.12 < views["conv1"].std().item() < 0.35
    with torch.no_grad():
        views["conv2"][1].fill_(7.0)
    assert (bank.templates[1] == 7.0).sum() == 4 * 4 * 9


def test_logit_inits():
    identity = _bank(init="identity", templates=3, positions=5).alpha(1)
    assert identity.argmax(1).tolist() == [0, 1, 2, 0, 1]
    torch.testing.assert_close(identity.sum(1), torch.ones(5))
    uniform = _bank(init="uniform").alpha(0)
    assert uniform.min() > 0.05 and uniform.max() < 0.8
    linear_identity = _bank("linear", init="identity", templates=2, positions=3).alpha(0)
    assert torch.equal(linear_identity, torch.tensor([[1.0, 0], [0, 1], [1, 0]]))
    orthogonal = _bank("linear", templates=4, positions=3).alpha(0)
    torch.testing.assert_close(orthogonal @ orthogonal.T, torch.eye(3))


def test_mixing_config_rejects_unknown_names():
    with pytest.raises(BlockmixError, match="coefficients"):
        MixingConfig(coefficients="sigmoid")
    with pytest.raises(BlockmixError, match="init"):
        MixingConfig(init="zeros")


def test_batchnorm_statistics_are_per_task():
    norm = TaskBatchNorm2d(3, num_tasks=2)
    norm(torch.randn(4, 3, 5, 5) + 5.0, task=1)
    assert torch.equal(norm.running_mean[0], torch.zeros(3))
    assert (norm.running_mean[1] > 0.3).all()
    norm.eval()
    x = torch.randn(2, 3, 4, 4)
    assert not torch.allclose(norm(x, task=0), norm(x, task=1))


def _he_std(kernel: torch.Tensor) -> float:
    """The standard deviation the baseline gives a conv kernel of this shape (He, fan-out)."""
    fan_out = kernel.shape[0] * kernel[0, 0].numel()
    return (2.0 / fan_out) ** 0.5


@pytest.mark.parametrize("coefficients", ["softmax", "linear"])
@pytest.mark.parametrize("mode", ["deeper", "compact"])
@pytest.mark.parametrize("name", list_models())
def test_default_init_gives_every_position_a_fair_start(name, mode, coefficients):
    """What each position receives starts like the baseline's layer (He std within 10%), and a
    bank of K templates starts as min(K, positions) different blocks, not one repeated block."""
    mixing = MixingConfig(coefficients=coefficients)
    torch.manual_seed(0)
    model = model_config(name, "tmix", mode=mode, mixing=mixing).build()
    banks = [m for m in model.modules() if isinstance(m, TemplateBank)]
    assert banks
    for bank in banks:
        with torch.no_grad():
            positions = bank()
        for params in positions:
            for tensor in (t for t in params.values() if t.dim() == 4):
                assert tensor.std().item() == pytest.approx(_he_std(tensor), rel=0.1)
        kernels = [torch.cat([t.flatten() for t in p.values() if t.dim() == 4]) for p in positions]
        distinct: list[torch.Tensor] = []
        for kernel in kernels:
            if not any(torch.allclose(kernel, seen, rtol=0.05, atol=0.0) for seen in distinct):
                distinct.append(kernel)
        assert len(distinct) >= min(bank.num_templates, bank.num_positions)


def test_uniform_init_is_the_symmetric_start_at_the_he_scale():
    torch.manual_seed(0)
    mixing = MixingConfig(init="uniform")
    bank = TemplateBank(BasicBlock(16, 16), 4, 8, 1, mixing)
    with torch.no_grad():
        kernels = [p["conv1"] for p in bank()]
    assert kernels[0].std().item() == pytest.approx(_he_std(kernels[0]), rel=0.1)
    assert all(torch.allclose(k, kernels[0], atol=0.05 * kernels[0].std().item()) for k in kernels)
    unscaled = TemplateBank(BasicBlock(16, 16), 4, 8, 1, replace(mixing, rescale_templates=False))
    with torch.no_grad():
        shrunk = unscaled()[0]["conv1"]
    assert shrunk.std().item() == pytest.approx(_he_std(shrunk) / 2, rel=0.1)  # 1/sqrt(K)
