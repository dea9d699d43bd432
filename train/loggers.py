"""Where training reports go: a small `Logger` interface; TensorBoard writes on rank 0.

``log(metrics, step)`` takes scalars named ``section/name``; `TensorBoardLogger` adds the alpha
matrices (heatmap image and histogram per task and bank) and the HParams summary of a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Logger(Protocol):
    """Receives scalars; the trainer calls it on every rank (only rank 0's writes)."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_alphas(self, alphas: dict[tuple[int, str], np.ndarray], step: int) -> None: ...

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    """The logger of ranks other than 0."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_alphas(self, alphas: dict[tuple[int, str], np.ndarray], step: int) -> None:
        pass

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Event files in ``directory`` (the run's ``tb/``)."""

    def __init__(self, directory: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(directory))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def log_alphas(self, alphas: dict[tuple[int, str], np.ndarray], step: int) -> None:
        """Each (task, bank) alpha matrix (positions x templates) as heatmap and histogram."""
        for (task, bank), alpha in alphas.items():
            tag = f"alpha/task{task}/{bank}"
            self.writer.add_image(tag, heatmap(alpha), step, dataformats="HWC")
            self.writer.add_histogram(tag, alpha, step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """The run's settings and final metrics for TensorBoard's HParams dashboard."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        for summary in hparams_summary(hparams, metrics):
            self.writer.file_writer.add_summary(summary)
        self.log(metrics, 0)

    def close(self) -> None:
        self.writer.close()


def heatmap(matrix: np.ndarray, cell: int = 12) -> np.ndarray:
    """An RGB uint8 image of ``matrix`` (rows = positions, columns = templates), viridis colours."""
    from matplotlib import colormaps

    values = np.asarray(matrix, dtype=np.float64)
    low, high = values.min(), values.max()
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    rgb = colormaps["viridis"](scaled)[..., :3]
    big = np.kron(rgb, np.ones((cell, cell, 1)))
    return (big * 255).round().astype(np.uint8)
