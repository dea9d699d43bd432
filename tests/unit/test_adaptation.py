"""Adaptation by target mixture logits on real DALI batches of the demo domains."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.config import DataConfig
from data_pipeline.loader import DaliLoader
from data_pipeline.prepare.demo import load_domain, prepare_demo
from train import models
from train.adaptation import Adapter, discrepancy_loss, moment_loss
from train.tasks import AdaptConfig

OPTIONS = dict(width=16, expansion=2, blocks=4, patch_size=4, head_width=32, templates=2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    prepare_demo(root, workers=1)
    return root


def data(root: Path) -> DataConfig:
    return DataConfig(
        root=str(root), batch_size=16, image_size=32, val_resize=32, num_threads=1, device="cpu"
    )


def adapt(demo: Path, loss: str, shuffle_target_labels: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.build("isometric", "tmix", 10, None, 3, **OPTIONS)
    target = load_domain(demo, "photo")
    if shuffle_target_labels:
        split = target.splits["train"]
        labels = np.random.default_rng(0).permutation(split.labels)
        target.splits["train"] = dataclasses.replace(split, labels=labels)
    loaders = [
        DaliLoader(data(demo / d), train=True, index=load_domain(demo, d))
        for d in ("digits", "inverted")
    ]
    loaders.append(DaliLoader(data(demo / "photo"), train=True, index=target))
    adapter = Adapter(model, 2, [0, 1], AdaptConfig(target="photo", loss=loss, steps=2, lr=0.1))
    try:
        history = adapter.run([iter(dl) for dl in loaders[:2]], iter(loaders[2]), "cpu")
    finally:
        for loader in loaders:
            loader.close()
    assert len(history) == 2 and all(np.isfinite(history))
    return model


@pytest.mark.parametrize("loss", ["moment", "adversarial", "discrepancy"])
def test_only_target_logits_change(demo, loss) -> None:
    torch.manual_seed(0)
    initial = models.build("isometric", "tmix", 10, None, 3, **OPTIONS).state_dict()
    adapted = adapt(demo, loss, shuffle_target_labels=False).state_dict()
    for key, value in adapted.items():
        if key.endswith("logits"):
            assert torch.equal(value[:2], initial[key][:2]), key
            assert not torch.equal(value[2], initial[key][2]), key
        elif "running_" not in key:
            assert torch.equal(value, initial[key]), key


def test_shuffled_target_labels_give_the_same_adapted_model(demo) -> None:
    adapted = adapt(demo, "adversarial", shuffle_target_labels=False).state_dict()
    shuffled = adapt(demo, "adversarial", shuffle_target_labels=True).state_dict()
    for key, value in adapted.items():
        assert torch.equal(value, shuffled[key]), key


def test_losses_are_zero_for_matching_inputs() -> None:
    features = torch.randn(16, 8)
    assert float(moment_loss(features, [features, features])) == 0.0
    assert float(discrepancy_loss(features, features)) == 0.0
    assert float(moment_loss(features, [features + 1.0])) > 0.0
