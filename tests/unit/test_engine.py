"""The generated DeepSpeed config, optimizer groups, LAMB and the EMA."""

from __future__ import annotations

import os

import pytest
import torch

from train.config import OptimConfig, load_config
from train.engine import (
    EMA,
    Lamb,
    accumulation_steps,
    build_optimizer,
    deepspeed_config,
    optimizer_groups,
)
from train.errors import BlockmixError


def config(*overrides: str):
    return load_config("demo", ["data.root=/x", *overrides])


@pytest.mark.parametrize(("world_size", "accum"), [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_global_batch_is_fixed_across_world_sizes(world_size: int, accum: int) -> None:
    ds = deepspeed_config(config("train.global_batch=256", "data.batch_size=32"), world_size, False)
    assert ds["train_batch_size"] == 256
    assert ds["gradient_accumulation_steps"] == accum
    assert ds["train_micro_batch_size_per_gpu"] == 32


def test_global_batch_must_divide() -> None:
    with pytest.raises(BlockmixError, match=r"train\.global_batch"):
        accumulation_steps(config("train.global_batch=100", "data.batch_size=32"), 2)


def test_zero_precision_clipping_and_extra_keys() -> None:
    ds = deepspeed_config(
        config(
            "train.zero_stage=2",
            "train.grad_clip=1.5",
            "deepspeed.extra.zero_optimization.reduce_bucket_size=1000",
            "deepspeed.extra.wall_clock_breakdown=true",
        ),
        2,
        False,
    )
    assert ds["zero_optimization"] == {
        "stage": 2,
        "elastic_checkpoint": True,
        "reduce_bucket_size": 1000,
    }
    assert ds["gradient_clipping"] == 1.5 and ds["wall_clock_breakdown"] is True
    assert "bf16" not in ds and "fp16" not in ds  # fp32 on the CPU
    assert "checkpoint" not in ds
    universal = deepspeed_config(config("train.zero_stage=3"), 1, False, load_universal=True)
    assert universal["checkpoint"] == {"load_universal": True}
    assert universal["zero_optimization"] == {"stage": 3}
    gpu = deepspeed_config(config("train.precision=fp16_full"), 1, True)
    assert gpu["fp16"]["enabled"] is True


@pytest.mark.parametrize(
    ("mode", "on_gpu", "sections"),
    [
        ("fp32", True, {}),
        ("bf16", True, {"torch_autocast": "bfloat16"}),
        ("bf16", False, {"torch_autocast": "bfloat16"}),  # autocast runs on the CPU too
        ("fp16", True, {"torch_autocast": "float16"}),
        ("bf16_full", True, {"bf16": None}),
        ("fp16_full", True, {"fp16": None}),
    ],
)
def test_precision_sections(mode: str, on_gpu: bool, sections: dict) -> None:
    ds = deepspeed_config(config(f"train.precision={mode}"), 1, on_gpu)
    present = {key: ds[key].get("dtype") for key in ("torch_autocast", "bf16", "fp16") if key in ds}
    assert present == sections
    assert all(ds[key]["enabled"] is True for key in present)
    if "torch_autocast" in ds:  # every gradient is reduced in fp32
        assert ds["torch_autocast"]["lower_precision_safe_modules"] == []


@pytest.mark.parametrize("mode", ["fp16", "bf16_full", "fp16_full"])
def test_gpu_only_precisions_are_refused_on_the_cpu(mode: str) -> None:
    with pytest.raises(BlockmixError, match=rf"train\.precision={mode} needs a GPU"):
        deepspeed_config(config(f"train.precision={mode}"), 1, False)


def test_unknown_precision_is_a_one_line_error() -> None:
    with pytest.raises(BlockmixError, match=r"train\.precision"):
        config("train.precision=bf17")


def test_bf16_autocast_engine_keeps_weights_and_batchnorm_fp32() -> None:
    """The generated config in a real DeepSpeed engine on the CPU: the block convolutions run in
    bf16, while parameters, mixed BN gamma/beta, BN statistics and gradients stay fp32."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from train import distributed
    from train import engine as ds
    from train.models import build, param_groups

    torch.manual_seed(0)
    model = build("isometric", "tmix", num_classes=10, width=8, expansion=2, blocks=3,
                  patch_size=4, head_width=16)  # fmt: skip
    seen: dict[str, torch.dtype] = {}
    conv2d, batch_norm = torch.nn.functional.conv2d, torch.nn.functional.batch_norm

    def record_conv(x, weight, *args, **kwargs):
        out = conv2d(x, weight, *args, **kwargs)
        seen["conv"] = out.dtype
        return out

    def record_bn(x, mean, var, weight=None, bias=None, *args, **kwargs):
        seen["bn_weight"], seen["bn_stats"] = weight.dtype, mean.dtype
        return batch_norm(x, mean, var, weight, bias, *args, **kwargs)

    distributed.init(distributed.DistEnv(master_port=distributed.free_port()))
    try:
        run = config("train.precision=bf16", "data.batch_size=4", "train.zero_stage=1")
        engine = ds.initialize(model, param_groups(model), run)
        assert engine.torch_autocast_enabled() and not engine.bfloat16_enabled()
        assert ds.input_dtype(engine) == torch.float32
        x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.nn.functional, "conv2d", record_conv)
            patch.setattr(torch.nn.functional, "batch_norm", record_bn)
            logits = engine(x)
        engine.backward(torch.nn.functional.cross_entropy(logits.float(), y))
        engine.step()
    finally:
        distributed.teardown()
    assert seen == {"conv": torch.bfloat16, "bn_weight": torch.float32, "bn_stats": torch.float32}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} == {torch.float32}
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_no_weight_decay_on_bn_logits_and_biases() -> None:
    from train.models import build, param_groups

    model = build("isometric", "tmix", num_classes=10, width=8, expansion=2, blocks=3,
                  patch_size=4, head_width=16)  # fmt: skip
    groups = param_groups(model)
    decay, no_decay, logits = optimizer_groups(groups, 0.05, logits_lr_scale=10.0)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert logits["weight_decay"] == 0.0 and logits["lr_scale"] == 10.0
    assert [id(p) for p in logits["params"]] == [id(p) for p in groups["logits"]]
    ids = {id(p) for p in no_decay["params"]}
    undecayed = groups["bn"] + groups["norm_templates"]
    assert groups["logits"] and groups["norm_templates"] and all(id(p) in ids for p in undecayed)
    assert all(id(p) not in ids for p in groups["templates"])
    assert all(p.ndim > 1 for p in decay["params"])
    counted = len(decay["params"]) + len(no_decay["params"]) + len(logits["params"])
    assert counted == len(list(model.parameters()))


def test_baselines_have_no_logits_group_and_set_lr_scales_the_logits() -> None:
    from types import SimpleNamespace

    from train.engine import set_lr
    from train.models import build, param_groups

    sizes = dict(num_classes=10, width=8, expansion=2, blocks=3, patch_size=4, head_width=16)
    assert len(optimizer_groups(param_groups(build("isometric", **sizes)), 0.05, 3.0)) == 2
    assert len(optimizer_groups(param_groups(build("isometric", "tmix", **sizes)), 0.05)) == 2
    groups = optimizer_groups(param_groups(build("isometric", "tmix", **sizes)), 0.05, 3.0)
    optimizer = build_optimizer(groups, OptimConfig())
    set_lr(SimpleNamespace(optimizer=optimizer), 0.5)
    assert [group["lr"] for group in optimizer.param_groups] == [0.5, 0.5, 1.5]


@pytest.mark.parametrize("name", ["sgd", "adamw", "lamb"])
def test_each_optimizer_reduces_a_loss(name: str) -> None:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 4))
    target = torch.randn(4, 4)
    optim_config = config(f"optim.name={name}", "optim.lr=0.05").optim
    optimizer = build_optimizer(optimizer_groups({"other": [weight]}, 0.0), optim_config)
    assert isinstance(optimizer, Lamb) == (name == "lamb")
    first = None
    for _ in range(20):
        loss = ((weight - target) ** 2).sum()
        first = first if first is not None else float(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.8 * first


def test_lamb_matches_its_formula_without_host_syncs(monkeypatch) -> None:
    torch.manual_seed(0)
    weight, zero = torch.nn.Parameter(torch.randn(3, 5)), torch.nn.Parameter(torch.zeros(4))
    grad = torch.randn(3, 5)
    expected = weight.detach().clone()
    mean, var = 0.1 * grad / 0.1, 0.001 * grad**2 / 0.001  # bias-corrected first step
    update = mean / (var.sqrt() + 1e-6) + 0.01 * expected
    expected -= 0.5 * (expected.norm() / update.norm()) * update
    optimizer = Lamb([weight, zero], lr=0.5, weight_decay=0.01)
    weight.grad, zero.grad = grad.clone(), torch.ones(4)

    def no_item(self):
        raise AssertionError("Lamb.step must not call .item()")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), expected)
    # a zero weight has no trust ratio: the plain update (trust 1)
    torch.testing.assert_close(zero.detach(), torch.full((4,), -0.5 / (1 + 1e-6)))


def test_ema_follows_the_weights() -> None:
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], start + 1.0)
    restored = EMA(model, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.5 and torch.equal(restored.shadow["weight"], ema.shadow["weight"])
