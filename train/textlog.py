"""Training as it reads in a job's log: Python `logging`, set up once by the CLI, on rank 0.

`configure_logging` sends blockmix's INFO records to stderr on rank 0 (other ranks: warnings
only). `TextLogger` is a `train.loggers.Logger` that writes one line per logged step (step, epoch,
loss, top-1, lr, img/s, data time, ETA) and one per validation, whether or not the progress bar
shows; `LoggerGroup` hands the trainer's reports to several loggers.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from importlib.metadata import version as _package_version
from typing import Any

from train.loggers import Alphas, Logger

PACKAGES = ("train", "data_pipeline", "slurm")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger(__name__)


def version() -> str:
    """The installed blockmix version."""
    return _package_version("blockmix")


def configure_logging(environ: Mapping[str, str] | None = None) -> None:
    """Log blockmix's INFO records to stderr on rank 0 and only warnings on other ranks.

    The rank is ``RANK`` (torchrun, `launch_local`, SLURM tasks) or ``SLURM_PROCID``. A root
    handler that already exists (an application embedding blockmix, pytest) is kept.
    """
    env = os.environ if environ is None else environ
    rank = int(env.get("RANK", env.get("SLURM_PROCID", "0")))
    logging.basicConfig(format=FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    for name in PACKAGES:
        logging.getLogger(name).setLevel(logging.INFO if rank == 0 else logging.WARNING)


def loader_position(per_rank: Mapping[str, Any]) -> str:
    """Where the loaders among a checkpoint's per-rank states are: ``epoch E, sample C``."""
    places = []
    for name, obj in per_rank.items():
        state = obj.state_dict() if hasattr(obj, "state_dict") else {}
        if "epoch" in state and "cursor" in state:
            places.append(f"{name} epoch {state['epoch']}, sample {state['cursor']}")
    return "; ".join(places) or "no loader position"


class TextLogger:
    """One log line per `log` call of training scalars (``train/*``, ``perf/*``) or val scalars.

    ``total_steps`` gives the ETA (remaining steps x the window's step time).
    """

    def __init__(self, total_steps: int, logger: logging.Logger = log) -> None:
        self.total_steps = total_steps
        self.logger = logger

    def log(self, metrics: dict[str, float], step: int) -> None:
        train = {k[6:]: v for k, v in metrics.items() if k.startswith("train/")}
        val = {k[4:]: v for k, v in metrics.items() if k.startswith("val/")}
        if train:
            self.logger.info(self._train_line(train, metrics, step))
        if val:
            self.logger.info(f"step {step} val {_fields(val)}")

    def _train_line(self, train: dict[str, float], metrics: dict[str, float], step: int) -> str:
        lr, epoch = train.pop("lr", None), train.pop("epoch", None)
        parts = [f"step {step}/{self.total_steps}"]
        if epoch is not None:
            parts.append(f"epoch {epoch:.2f}")
        parts.append(_fields(train))
        if lr is not None:
            parts.append(f"lr {lr:.4g}")
        if "perf/images_per_s" in metrics:
            parts.append(f"img/s {metrics['perf/images_per_s']:.1f}")
        if "perf/data_time_s" in metrics:
            parts.append(f"data {metrics['perf/data_time_s'] * 1000:.1f}ms")
        if "perf/step_time_s" in metrics:
            left = max(self.total_steps - step, 0) * metrics["perf/step_time_s"]
            parts.append(f"eta {datetime.timedelta(seconds=round(left))}")
        return " ".join(part for part in parts if part)

    def log_alphas(self, alphas: Alphas, step: int, coefficients: str = "softmax") -> None:
        """Alpha matrices are images: TensorBoard's, not the log's."""

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        self.logger.info(f"final {_fields(metrics)}")

    def close(self) -> None:
        """Nothing to release: the logging handlers belong to the process."""


class LoggerGroup:
    """Several loggers behind one: every report goes to each, in order."""

    def __init__(self, *loggers: Logger) -> None:
        self.loggers = loggers

    def log(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log(metrics, step)

    def log_alphas(self, alphas: Alphas, step: int, coefficients: str = "softmax") -> None:
        for logger in self.loggers:
            logger.log_alphas(alphas, step, coefficients)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.log_hparams(hparams, metrics)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def _fields(metrics: Mapping[str, float]) -> str:
    """``name value`` pairs: loss with 4 decimals, accuracies (%) with 2, others 4 digits."""
    out = []
    for name, value in metrics.items():
        short = name.removeprefix("hparams/")
        if short.endswith("loss"):
            out.append(f"{short} {value:.4f}")
        elif short.endswith(("top1", "top5")):
            out.append(f"{short} {value:.2f}")
        else:
            out.append(f"{short} {value:.4g}")
    return " ".join(out)
