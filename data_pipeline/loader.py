"""The loader the training engine iterates: DALI pixels in blockmix's sample order, resumable.

One `DaliLoader` serves one rank (``rank`` and ``world_size`` are plain arguments; nothing here
imports torch.distributed). Its position is ``{"epoch", "cursor"}`` plus the settings that fix the
order; because crops and flips are pure functions of (seed, epoch, sample) (`data_pipeline.order`),
that small state resumes bit-exactly at the same world size and at the same global sample at
another world size, with no DALI RNG checkpoint needed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from data_pipeline.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from data_pipeline.errors import BlockmixError
from data_pipeline.order import EvalOrder, TrainOrder, crop_windows, epoch_permutation

if TYPE_CHECKING:
    from data_pipeline.index_format import DatasetIndex, Split


class Batch(NamedTuple):
    """One step of one rank: images (N, 3, S, S), int64 labels (N,), bool valid (N,).

    ``valid`` is all true in training; in evaluation it marks the padding that keeps every rank's
    step count equal, which metrics must leave out.
    """

    images: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor


class _Step(NamedTuple):
    epoch: int
    next_cursor: int
    indices: np.ndarray
    valid: np.ndarray


class DaliLoader:
    """Batches of one split for one rank, with `state_dict` / `load_state_dict` and `data_time`.

    Training: each ``iter(loader)`` yields the rest of the current epoch, then moves to the next.
    Evaluation: each ``iter(loader)`` is one whole pass over the split (exact-once with ``valid``).
    ``data_time`` is the seconds the last step waited for its batch (input-bound when it is a
    large share of the step time).
    """

    def __init__(
        self,
        config: DataConfig,
        *,
        train: bool,
        rank: int = 0,
        world_size: int = 1,
        device_id: int | None = None,
        index: DatasetIndex | None = None,
    ) -> None:
        config.validate()
        if not 0 <= rank < world_size:
            raise BlockmixError(f"rank {rank} is outside world size {world_size}")
        self.config = config
        self.train = train
        self.index = index if index is not None else _load_index(config.root)
        field = "train_split" if train else "val_split"
        self.split = _get_split(self.index, getattr(config, field), field)
        samples = len(self.split.files)
        if train:
            self.order: TrainOrder | EvalOrder = TrainOrder(
                samples, config.batch_size, rank, world_size, config.drop_last
            )
            if self.order.steps_per_epoch == 0:
                raise BlockmixError(
                    f"data.batch_size={config.batch_size} is larger than each rank's share of "
                    f"split {self.split_name!r} ({samples} samples over {world_size} ranks); "
                    "lower it or use fewer ranks"
                )
        else:
            self.order = EvalOrder(samples, config.eval_batch_size, rank, world_size)
        self.device_id = _resolve_device(config.device, device_id)
        self.epoch = 0
        self.cursor = 0
        self.data_time = 0.0
        self._pipe = None
        self._pipe_at: tuple[int, int] | None = None
        self._plan: Iterator[_Step] | None = None

    @property
    def split_name(self) -> str:
        """The name of the split this loader reads."""
        return self.config.train_split if self.train else self.config.val_split

    @property
    def num_classes(self) -> int:
        """Number of classes in the dataset index."""
        return len(self.index.classes)

    @property
    def steps_per_epoch(self) -> int:
        """Steps in one whole epoch (training) or one evaluation pass."""
        return self.order.steps_per_epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        self._start_epoch()
        for _ in range(self._steps_left()):
            start = time.perf_counter()
            step = next(self._plan)
            images = self._next_images()
            self.data_time = time.perf_counter() - start
            self.epoch, self.cursor = step.epoch, step.next_cursor
            self._pipe_at = (self.epoch, self.cursor)
            labels = torch.from_numpy(self.split.labels[step.indices].astype(np.int64))
            valid = torch.from_numpy(step.valid)
            yield Batch(images, labels.to(images.device), valid.to(images.device))

    def state_dict(self) -> dict[str, Any]:
        """The position: where the next step starts, and what fixes the order."""
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "seed": self.config.seed,
            "num_samples": len(self.split.files),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by `state_dict` (at any world size)."""
        if state["num_samples"] != len(self.split.files):
            raise BlockmixError(
                f"data.root: the checkpoint's split {self.split_name!r} had {state['num_samples']} "
                f"samples, this one has {len(self.split.files)}; resume on the same dataset"
            )
        if state["seed"] != self.config.seed:
            raise BlockmixError(
                f"data.seed={self.config.seed} differs from the checkpoint's {state['seed']}; "
                "resume with the same seed"
            )
        epoch, cursor = int(state["epoch"]), int(state["cursor"])
        if epoch < 0 or not 0 <= cursor <= len(self.split.files):
            raise BlockmixError(
                f"loader state epoch={epoch}, cursor={cursor} is outside split "
                f"{self.split_name!r}; the checkpoint is damaged"
            )
        self.epoch, self.cursor = epoch, cursor

    def close(self) -> None:
        """Stop the DALI pipeline and free its buffers (the loader can be iterated again)."""
        self._pipe = None
        self._plan = None
        self._pipe_at = None

    def _start_epoch(self) -> None:
        """Move past a finished (or, for evaluation, interrupted) epoch; align the pipeline."""
        finished = self._steps_left() <= 0
        if finished or (not self.train and self.cursor):
            if finished and self._pipe_at == (self.epoch, self.cursor):
                self._pipe_at = (self.epoch + 1, 0)  # the pipeline runs on into the next epoch
            self.epoch, self.cursor = self.epoch + 1, 0
        if self._pipe_at != (self.epoch, self.cursor):
            self._build()

    def _steps_left(self) -> int:
        if self.train:
            return self.order.steps_from(self.cursor)
        return self.order.steps_per_epoch - self.cursor

    def _build(self) -> None:
        from data_pipeline.pipelines import build_pipeline

        self.close()
        self._plan = self._steps()
        source = _Source(self._steps(), self)
        self._pipe = build_pipeline(
            self.config,
            source,
            train=self.train,
            batch_size=self.order.batch_size,
            device_id=self.device_id,
        )
        self._pipe_at = (self.epoch, self.cursor)

    def _steps(self) -> Iterator[_Step]:
        """Every step from the current position on, through all later epochs (or passes)."""
        epoch, cursor = self.epoch, self.cursor
        while True:
            if self.train:
                permutation = epoch_permutation(len(self.split.files), self.config.seed, epoch)
                while self.order.step_size(cursor):
                    positions, cursor = self.order.positions(cursor)
                    indices = permutation[positions]
                    yield _Step(epoch, cursor, indices, np.ones(len(indices), dtype=bool))
            else:
                while cursor < self.order.steps_per_epoch:
                    indices, valid = self.order.batch(cursor)
                    cursor += 1
                    yield _Step(epoch, cursor, indices, valid)
            epoch, cursor = epoch + 1, 0

    def _next_images(self) -> torch.Tensor:
        try:
            (images,) = self._pipe.run()
        except (RuntimeError, OSError) as error:  # a decode failure, or a file gone since indexing
            self.close()
            raise BlockmixError(
                f"data.root: could not load split {self.split_name!r} at epoch {self.epoch}, "
                f"cursor {self.cursor}: {_reason(error)}; check the files or re-run `blockmix prepare`"
            ) from error
        images = torch.from_dlpack(images.as_tensor())  # zero-copy; DALI keeps it valid
        return images.permute(0, 3, 1, 2) if self.config.channels_last else images


class _Source:
    """The pipeline's ``external_source``: encoded bytes (and crops) of each planned step."""

    def __init__(self, steps: Iterator[_Step], loader: DaliLoader) -> None:
        self.steps = steps
        self.root = Path(loader.index.root)
        self.split = loader.split
        self.config = loader.config
        self.train = loader.train

    def __iter__(self) -> Iterator[Any]:
        for step in self.steps:
            encoded = [self._read(int(i)) for i in step.indices]
            if not self.train:
                yield encoded
                continue
            anchors, shapes, flips = crop_windows(
                self.split.sizes[step.indices],
                step.indices,
                seed=self.config.seed,
                epoch=step.epoch,
                scale=self.config.scale,
                ratio=self.config.ratio,
            )
            yield encoded, anchors, shapes, flips.astype(np.int32)

    def _read(self, i: int) -> np.ndarray:
        with open(self.root / self.split.files[i], "rb") as file:
            if self.split.offsets is None:
                return np.frombuffer(file.read(), dtype=np.uint8)
            offset, length = self.split.offsets[i]
            file.seek(int(offset))
            return np.frombuffer(file.read(int(length)), dtype=np.uint8)


def normalize(
    images: torch.Tensor,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """Finish ``output="uint8"`` batches on their device: float32 ``(x/255 - mean) / std``."""
    shape = (1, 3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(shape) * 255
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(shape) * 255
    return (images.float() - mean_t) / std_t


def model_input(
    images: torch.Tensor,
    data: DataConfig,
    device: str | torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A batch as a model takes it: on ``device``, finished by `normalize` there when
    ``data.output`` is ``"uint8"``, in ``dtype``. Trainers and evaluation call this on every
    batch."""
    images = images.to(device)
    if data.output == "uint8":
        images = normalize(images, data.mean, data.std)
    return images.to(dtype)


def check_num_classes(index: DatasetIndex, num_classes: int) -> None:
    """Raise if the model's class count differs from the dataset's."""
    if num_classes != len(index.classes):
        raise BlockmixError(
            f"model.num_classes={num_classes} but data.root {index.root} has "
            f"{len(index.classes)} classes; set model.num_classes={len(index.classes)}"
        )


def _reason(error: Exception) -> str:
    """One line from a DALI error: the failing operator and what it encountered."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "encountered:" in lines[:-1]:
        operator = re.search(r"operator `([^`]+)`", str(error))
        cause = lines[lines.index("encountered:") + 1]
        return f"{operator.group(1)}: {cause}" if operator else cause
    return lines[0] if lines else type(error).__name__


def _resolve_device(device: str, device_id: int | None) -> int | None:
    """The CUDA device to decode on, or None for CPU decoding."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return None
    if not torch.cuda.is_available():
        raise BlockmixError("data.device=gpu but torch sees no CUDA device; use auto or cpu")
    return torch.cuda.current_device() if device_id is None else device_id


def _load_index(root: str) -> DatasetIndex:
    if not Path(root).is_dir():
        raise BlockmixError(
            f"data.root {root!r} is not a folder; run `blockmix prepare demo OUT` or point "
            "data.root at a prepared dataset"
        )
    from data_pipeline.index_format import load_index

    try:
        return load_index(root)
    except BlockmixError as error:
        raise BlockmixError(f"data.root: {error}") from None


def _get_split(index: DatasetIndex, name: str, field: str) -> Split:
    if name not in index.splits:
        raise BlockmixError(
            f"data.{field}={name!r} is not a split of {index.root} "
            f"(it has: {', '.join(sorted(index.splits)) or 'none'})"
        )
    split = index.splits[name]
    if len(split.files) == 0:
        raise BlockmixError(f"data.{field}={name!r} at {index.root} has no samples")
    return split
