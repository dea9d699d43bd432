"""FLOPs per image and the alpha-matrix export."""

import csv
import json

import numpy as np
import pytest
import torch

from train.errors import BlockmixError
from train.models import MixingConfig, alpha_matrices, build, flops_per_image, write_alpha


def test_flops_per_image_matches_published_resnet18():
    with torch.device("meta"):
        model = build("resnet18")
    # ResNet-18: 1.82 GMACs at 224 px -> ~3.64 GFLOPs (multiply and add counted).
    assert 3.55e9 < flops_per_image(model, 224) < 3.7e9
    assert flops_per_image(model, 112) < flops_per_image(model, 224) / 3.5
    assert model.training


def test_alpha_export_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build("mobilenet_v2", "tmix", width_multiplier=0.25, num_tasks=2, num_classes=5)
    matrices = alpha_matrices(model)
    assert {bank for _, bank in matrices} == {f"stages.{i}.bank" for i in range(1, 6)}
    assert matrices[(1, "stages.3.bank")].shape == (3, 3)
    for matrix in matrices.values():
        np.testing.assert_allclose(matrix.sum(1), 1.0, rtol=1e-6)
    data = json.loads(write_alpha(model, tmp_path / "alpha.json").read_text())
    for row in data:
        np.testing.assert_allclose(row["alpha"], matrices[(row["task"], row["bank"])], rtol=1e-6)
    with (tmp_path / "alpha.csv").open("w"):
        pass
    write_alpha(model, tmp_path / "alpha.csv")
    with (tmp_path / "alpha.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == sum(m.size for m in matrices.values())
    row = rows[-1]
    value = matrices[(int(row["task"]), row["bank"])][int(row["position"]), int(row["template"])]
    assert float(row["alpha"]) == pytest.approx(value, rel=1e-5)
    with pytest.raises(BlockmixError, match=r"\.json or \.csv"):
        write_alpha(model, tmp_path / "alpha.txt")


def test_linear_coefficients_are_exported_raw():
    mixing = MixingConfig(coefficients="linear", init="identity")
    model = build("isometric", "tmix", width=8, blocks=3, templates=2, mixing=mixing)
    (alpha,) = alpha_matrices(model).values()
    assert alpha.tolist() == [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
