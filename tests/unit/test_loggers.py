"""TensorBoard logging, read back with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from train.loggers import TensorBoardLogger, heatmap


def test_scalars_alphas_and_hparams(tmp_path: Path) -> None:
    from train.models import alpha_matrices, build

    model = build("isometric", "tmix", num_classes=10, width=8, expansion=2, blocks=3,
                  patch_size=4, head_width=16)  # fmt: skip
    alphas = alpha_matrices(model)
    logger = TensorBoardLogger(tmp_path)
    logger.log({"train/loss": 2.5, "train/lr": 0.1}, 1)
    logger.log({"train/loss": 1.5, "train/lr": 0.05}, 2)
    logger.log_alphas(alphas, 2)
    logger.log_hparams({"model.name": "isometric", "optim.lr": 0.1}, {"hparams/top1": 50.0})
    logger.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == [2.5, 1.5]
    (task, bank), alpha = next(iter(alphas.items()))
    tag = f"alpha/task{task}/{bank}"
    assert tag in events.Tags()["images"] and tag in events.Tags()["histograms"]
    image = events.Images(tag)[0]
    assert (image.height, image.width) == (alpha.shape[0] * 12, alpha.shape[1] * 12)
    assert events.PluginTagToContent("hparams")
    assert events.Scalars("hparams/top1")[0].value == 50.0


def test_heatmap_shape_and_range() -> None:
    image = heatmap(np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]), cell=2)
    assert image.shape == (6, 4, 3) and image.dtype == np.uint8
    assert not np.array_equal(image[0, 0], image[0, 2])
