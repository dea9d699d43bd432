"""Where training reports go: a small `Logger` interface; TensorBoard writes on rank 0.

``log(metrics, step)`` takes scalars named ``section/name``; `TensorBoardLogger` adds the alpha
matrices and the HParams summary of a run. TensorBoard tags of the alphas (one tag holds one kind
of data, or TensorBoard's loader drops it):

- ``alpha/task<t>/<bank>``: heatmap image of a (task, bank) matrix, positions x templates, with a
  colour bar; ``alpha/tasks``: all of them in one picture, a column per task, a row per bank;
- ``alpha_hist/task<t>/<bank>``: histogram of the same matrix.

Softmax mixture weights are drawn on a fixed 0..1 scale, linear coefficients on a symmetric scale
(see `color_range`), so that a colour means the same value in every step and run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# Local event files get each record as soon as the writer's thread has it; where writes are
# buffered (TensorFlow's gfile, remote file systems) they reach the storage at least this often
# (TensorBoard's default: 120 s), so that `blockmix status` and TensorBoard show a running job
# within a minute.
FLUSH_SECS = 10
Alphas = dict[tuple[int, str], np.ndarray]


class Logger(Protocol):
    """Receives scalars; the trainer calls it on every rank (only rank 0's writes)."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_alphas(self, alphas: Alphas, step: int, coefficients: str = "softmax") -> None: ...

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    """The logger of ranks other than 0."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_alphas(self, alphas: Alphas, step: int, coefficients: str = "softmax") -> None:
        pass

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Event files in ``directory`` (the run's ``tb/``), flushed every `FLUSH_SECS` seconds and
    after each evaluation's alpha matrices."""

    def __init__(self, directory: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(directory), flush_secs=FLUSH_SECS)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def log_alphas(self, alphas: Alphas, step: int, coefficients: str = "softmax") -> None:
        """Heatmap and histogram of each (task, bank) alpha matrix (positions x templates), and
        all matrices in one picture. ``coefficients``: the banks' mode, ``softmax`` or
        ``linear``. An evaluation ends with these, so its results reach the disk at once."""
        if not alphas:
            return
        low, high = color_range(alphas.values(), coefficients)
        for (task, bank), alpha in alphas.items():
            image = alpha_image({(task, bank): alpha}, low, high)
            self.writer.add_image(f"alpha/task{task}/{bank}", image, step, dataformats="HWC")
            self.writer.add_histogram(f"alpha_hist/task{task}/{bank}", alpha, step)
        self.writer.add_image(
            "alpha/tasks", alpha_image(alphas, low, high), step, dataformats="HWC"
        )
        self.writer.flush()

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """The run's settings and final metrics for TensorBoard's HParams dashboard."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        for summary in hparams_summary(hparams, metrics):
            self.writer.file_writer.add_summary(summary)
        self.log(metrics, 0)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def color_range(matrices: Any, coefficients: str) -> tuple[float, float]:
    """The colour scale of alpha heatmaps: 0..1 for softmax weights; for linear coefficients
    -m..m, m the largest magnitude rounded up to 1, 2 or 5 times a power of ten (at least 1), so
    that the scale changes only when the coefficients outgrow it."""
    if coefficients == "softmax":
        return 0.0, 1.0
    if coefficients != "linear":
        raise ValueError(f"coefficients: {coefficients!r} is neither 'softmax' nor 'linear'")
    largest = max(float(np.abs(m).max(initial=0.0)) for m in matrices)
    if not math.isfinite(largest) or largest <= 1.0:
        return -1.0, 1.0
    power = 10.0 ** math.floor(math.log10(largest))
    bound = next(f * power for f in (1, 2, 5, 10) if f * power >= largest)
    return -bound, bound


def alpha_image(alphas: Alphas, low: float, high: float, dpi: int = 100) -> np.ndarray:
    """An RGB uint8 picture of the alpha matrices: a column per task, a row per bank, each a
    positions x templates heatmap on the scale ``low..high``, with one labelled colour bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    tasks = sorted({task for task, _ in alphas})
    banks = list(dict.fromkeys(bank for _, bank in alphas))
    rows = [max(alphas[(t, b)].shape[0] for t in tasks if (t, b) in alphas) for b in banks]
    columns = max(matrix.shape[1] for matrix in alphas.values())
    cell = 0.28  # inches per matrix entry
    figure = Figure(
        figsize=(len(tasks) * (columns * cell + 0.9) + 1.2, sum(rows) * cell + len(banks) * 0.8),
        dpi=dpi,
        layout="constrained",
    )
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(len(banks), len(tasks), height_ratios=rows)
    cmap = "viridis" if low >= 0 else "RdBu_r"
    shown = None
    for i, bank in enumerate(banks):
        for j, task in enumerate(tasks):
            axes = figure.add_subplot(grid[i, j])
            if (task, bank) not in alphas:
                axes.set_axis_off()
                continue
            shown = axes.imshow(alphas[(task, bank)], cmap=cmap, vmin=low, vmax=high)
            axes.set_title(f"task {task}, {bank}", fontsize=8)
            axes.set_xlabel("template", fontsize=7)
            axes.set_ylabel("position", fontsize=7)
            axes.tick_params(labelsize=6)
            for axis in (axes.xaxis, axes.yaxis):
                axis.set_major_locator(MaxNLocator(integer=True))
    bar = figure.colorbar(shown, ax=figure.axes, shrink=0.9)
    bar.set_label("alpha" if low >= 0 else "coefficient", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
