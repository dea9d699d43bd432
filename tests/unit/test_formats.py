"""Export formats: torchvision's keys and shapes (kept as data, from torchvision 0.29.1), the
baked plain network of a template variant, and model configs as metadata text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from train.errors import BlockmixError
from train.formats import bake, model_from_spec, model_spec, torchvision_state_dict
from train.models import MixingConfig, build, list_models, model_config

TORCHVISION = json.loads(
    (Path(__file__).parent / "data" / "torchvision_state_shapes.json").read_text()
)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "mobilenet_v2"])
def test_torchvision_keys_and_shapes(name):
    with torch.device("meta"):
        model = build(name)
    state = torchvision_state_dict(model)
    assert {key: list(value.shape) for key, value in state.items()} == TORCHVISION["models"][name]


def test_torchvision_values_come_from_the_right_tensors():
    model = build("resnet18", num_classes=10)
    with torch.no_grad():
        model.stages[1].first.norms["down_bn"].running_mean.normal_()
    state = torchvision_state_dict(model)
    assert torch.equal(state["conv1.weight"], model.stem.conv.weight)
    assert torch.equal(state["layer2.0.downsample.0.weight"], model.stages[1].first.params["down"])
    assert torch.equal(
        state["layer2.0.downsample.1.running_mean"],
        model.stages[1].first.norms["down_bn"].running_mean[0],
    )
    assert torch.equal(state["layer4.1.conv2.weight"], model.stages[3].blocks[0].params["conv2"])
    assert torch.equal(state["fc.weight"], model.heads[0].weight)
    assert state["bn1.num_batches_tracked"].item() == 0
    assert sum(v.numel() for k, v in state.items() if "num_batches" not in k) == sum(
        v.numel() for v in model.state_dict().values()
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "isometric"},
        {"name": "resnet18", "variant": "tmix"},
        {"name": "resnet18", "num_tasks": 2},
    ],
)
def test_torchvision_format_refuses_other_networks(kwargs):
    with torch.device("meta"):
        model = build(**kwargs)
    with pytest.raises(BlockmixError, match="--format torchvision needs"):
        torchvision_state_dict(model)


def _randomise(model: torch.nn.Module) -> None:
    """Random logits, BN gamma/beta and statistics, so that every mixed tensor matters."""
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("logits"):
                tensor.normal_(0.0, 2.0)
            elif name.endswith("norm_templates") or name.endswith("running_mean"):
                tensor.normal_(0.0, 0.3)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("isometric", {"blocks": 6, "templates": 2, "width": 16, "expansion": 2, "patch_size": 4}),
        ("resnet18", {"mode": "deeper", "width_multiplier": 0.25}),
        ("mobilenet_v2", {"templates": 1, "width_multiplier": 0.35}),
    ],
)
def test_bake_computes_what_the_mixture_computes(name, kwargs):
    torch.manual_seed(0)
    model = build(name, "tmix", num_classes=(10, 7), num_tasks=2, **kwargs)
    _randomise(model)
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    for task, classes in ((0, 10), (1, 7)):
        plain = bake(model, task)
        assert plain.config.variant == "baseline" and plain.num_tasks == 1
        assert not any("bank" in key for key in plain.state_dict())
        assert all(stage.bank is None for stage in plain.stages)
        positions = sum(len(stage.blocks) for stage in model.stages)
        assert sum(len(stage.blocks) for stage in plain.stages) == positions
        with torch.no_grad():
            got, want = plain(x), model(x, task)
        assert got.shape == (3, classes)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_bake_refuses_a_task_out_of_range():
    with torch.device("meta"):
        model = build("isometric", "tmix", blocks=2)
    with pytest.raises(BlockmixError, match="--task 3 is out of range"):
        bake(model, 3)


@pytest.mark.parametrize("name", list_models())
def test_model_spec_round_trip(name):
    config = model_config(name, "tmix", num_classes=(10, 5), num_tasks=2, mode=None, templates=2)
    config = config.replace(mixing=MixingConfig(coefficients="linear", init="identity"))
    again = model_from_spec(model_spec(config))
    assert again == config and type(again) is type(config)


def test_unknown_family_is_one_line():
    with pytest.raises(BlockmixError, match="model family"):
        model_from_spec('{"family": "VGGConfig"}')
