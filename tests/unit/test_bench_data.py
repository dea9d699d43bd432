"""`make bench-data`'s stage breakdown: the stage pipelines stop where named, shares add up."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.append(str(Path(__file__).parents[1] / "benchmarks"))
bench_data = importlib.import_module("bench_data")


def test_stage_shares_split_the_loader_cost_per_round():
    # CPU s per image: a 0.25, a+b 0.5, loader 1.0 (round 2: all doubled)
    cpu = {"a": [4.0, 2.0], "b": [2.0, 1.0], "loader": [1.0, 0.5]}
    shares = bench_data.stage_shares(cpu, ["a", "b", "loader"])
    assert [shares[n].median for n in ("a", "b", "loader")] == pytest.approx([0.25, 0.25, 0.5])
    assert shares["loader"].low == shares["loader"].high


def test_stage_pipelines_stop_after_their_stage(tmp_path):
    index = bench_data.make_images(tmp_path, 4)
    sizes = index.splits["train"].sizes
    outputs = {}
    for stage, until in bench_data.STAGES.items():
        pipe = bench_data.stage_pipeline(index, threads=1, batch=4, until=until)
        outputs[stage] = [np.array(image) for image in pipe.run()[0]]
    roi, resized, whole = outputs.values()
    assert all(image.dtype == np.uint8 and image.shape[2] == 3 for image in roi)
    assert any(image.shape[:2] != tuple(size) for image, size in zip(roi, sizes, strict=True))
    assert all(image.shape == (224, 224, 3) and image.dtype == np.uint8 for image in resized)
    assert all(image.shape == (3, 224, 224) and image.dtype == np.float32 for image in whole)
