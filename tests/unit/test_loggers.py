"""TensorBoard logging, read back with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from train.loggers import TensorBoardLogger, alpha_image, color_range


def read(directory: Path) -> EventAccumulator:
    events = EventAccumulator(str(directory), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    return events


def test_scalars_alphas_and_hparams(tmp_path: Path) -> None:
    from train.models import alpha_matrices, build

    model = build("isometric", "tmix", num_classes=10, width=8, expansion=2, blocks=3,
                  patch_size=4, head_width=16, num_tasks=2)  # fmt: skip
    alphas = alpha_matrices(model)
    logger = TensorBoardLogger(tmp_path)
    logger.log({"train/loss": 2.5, "train/lr": 0.1}, 1)
    logger.log({"train/loss": 1.5, "train/lr": 0.05}, 2)
    logger.log_alphas(alphas, 2)
    tags = read(tmp_path).Tags()  # flushed after the alphas, before close
    assert set(tags["images"]) == {f"alpha/task{t}/{b}" for t, b in alphas} | {"alpha/tasks"}
    assert set(tags["histograms"]) == {f"alpha_hist/task{t}/{b}" for t, b in alphas}
    logger.log_hparams({"model.name": "isometric", "optim.lr": 0.1}, {"hparams/top1": 50.0})
    logger.close()
    events = read(tmp_path)
    assert [e.value for e in events.Scalars("train/loss")] == [2.5, 1.5]
    assert events.PluginTagToContent("hparams")
    assert events.Scalars("hparams/top1")[0].value == 50.0


def test_buffered_writes_reach_the_disk_within_30_seconds(tmp_path: Path) -> None:
    """Local event files get each record as it is written; where writes are buffered (TensorFlow's
    gfile, object stores) the writer's flush interval bounds how stale TensorBoard can be."""
    logger = TensorBoardLogger(tmp_path)
    try:
        assert 0 < logger.writer.flush_secs <= 30
    finally:
        logger.close()


def colour_pixels(image: np.ndarray, value: float, cmap: str = "viridis") -> int:
    """How many pixels of ``image`` have the colour ``cmap`` gives ``value`` (on a 0..1 scale)."""
    rgb = np.array(colormaps[cmap](value)[:3]) * 255
    return int((np.abs(image.astype(float) - rgb).max(axis=-1) <= 2).sum())


def test_softmax_heatmaps_share_one_fixed_scale() -> None:
    # The second row is the same in both matrices: on a fixed 0..1 scale it has the same colour;
    # scaled to each matrix's own range, 0.6 would be 0.6 in the first and 0.75 in the second.
    first = alpha_image({(0, "b"): np.array([[0.0, 1.0], [0.6, 0.4]])}, 0.0, 1.0)
    second = alpha_image({(0, "b"): np.array([[0.3, 0.7], [0.6, 0.4]])}, 0.0, 1.0)
    assert first.shape == second.shape and first.dtype == np.uint8
    cell = colour_pixels(first, 0.6)
    assert cell > 200 and colour_pixels(second, 0.6) == cell
    assert colour_pixels(second, 0.75) < cell / 10  # only the colour bar's sliver
    assert colour_pixels(first, 0.0) > 200 and colour_pixels(second, 0.0) < cell / 10


def test_linear_coefficients_use_a_symmetric_diverging_scale() -> None:
    matrix = np.array([[-0.5, 0.0], [0.25, 0.5]])
    assert color_range([matrix], "linear") == (-1.0, 1.0)
    assert color_range([matrix * 7.4], "linear") == (-5.0, 5.0)
    assert color_range([matrix * 30], "linear") == (-20.0, 20.0)
    assert color_range([matrix], "softmax") == (0.0, 1.0)
    with pytest.raises(ValueError, match="coefficients"):
        color_range([matrix], "sigmoid")
    image = alpha_image({(0, "b"): matrix}, -1.0, 1.0)
    assert colour_pixels(image, 0.5, "RdBu_r") > 200  # coefficient 0 is the middle colour
    assert colour_pixels(image, 0.25, "RdBu_r") > 200  # -0.5


def test_the_overview_has_a_panel_per_task_and_bank() -> None:
    alphas = {(t, b): np.full((n, 2), 0.2 * t) for t in range(3) for b, n in (("a", 2), ("b", 3))}
    image = alpha_image(alphas, 0.0, 1.0)
    one = alpha_image({(0, "a"): alphas[(0, "a")]}, 0.0, 1.0)
    assert image.shape[1] > 2 * one.shape[1]  # three columns of panels
    for task in range(3):
        assert colour_pixels(image, 0.2 * task) > 100
