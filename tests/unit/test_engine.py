"""The generated DeepSpeed config, optimizer groups, LAMB and the EMA."""

from __future__ import annotations

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
    gpu = deepspeed_config(config("train.precision=fp16"), 1, True)
    assert gpu["fp16"]["enabled"] is True
    with pytest.raises(BlockmixError, match=r"train\.precision"):
        deepspeed_config(config("train.precision=bf16"), 1, False)


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
