"""`blockmix export RUN --format torchvision` of a real (one-step) resnet18 run: torchvision's
key names and shapes (test data from torchvision 0.29.1), and torchvision itself where it
imports (its PyPI wheel does not import beside the CPU torch of `make setup`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.export import load_model
from train.formats import torchvision_state_dict

DATA = Path(__file__).parents[1] / "unit" / "data" / "torchvision_state_shapes.json"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    from data_pipeline.prepare.demo import prepare_demo

    root = tmp_path_factory.mktemp("tv")
    prepare_demo(root / "demo")
    config = root / "resnet18.yaml"
    config.write_text(
        f"run: {{dir: {root / 'run'}}}\nmodel: {{name: resnet18, num_classes: 10}}\n"
        f"data: {{root: {root / 'demo'}, batch_size: 8, image_size: 32, val_resize: 32}}\n"
        "train: {steps: 1, progress: false}\ncheckpoint: {every: 0}\n"
    )
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    outputs = root / "torchvision.safetensors", root / "blockmix.safetensors"
    commands = [
        ["train", str(config)],
        ["export", str(root / "run"), "--out", str(outputs[0]), "--format", "torchvision"],
        ["export", str(root / "run"), "--out", str(outputs[1])],
    ]
    for args in commands:
        proc = subprocess.run(
            [sys.executable, "-m", "train", *args], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return outputs


def test_keys_shapes_and_values_are_torchvisions(exported):
    torchvision_file, blockmix_file = exported
    state = load_file(str(torchvision_file))
    want = json.loads(DATA.read_text())["models"]["resnet18"] | {
        "fc.weight": [10, 512],
        "fc.bias": [10],
    }
    assert {key: list(value.shape) for key, value in state.items()} == want
    mapped = torchvision_state_dict(load_model(blockmix_file))
    assert state.keys() == mapped.keys()
    for key, value in mapped.items():
        assert torch.equal(state[key], value), key


def test_torchvision_loads_it_strictly_and_computes_the_same(exported):
    torchvision = pytest.importorskip("torchvision")
    torchvision_file, blockmix_file = exported
    theirs = torchvision.models.resnet18(num_classes=10).eval()
    theirs.load_state_dict(load_file(str(torchvision_file)), strict=True)
    ours = load_model(blockmix_file)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(theirs(x), ours(x))
