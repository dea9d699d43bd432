"""The data sub-config: what the training engine sets to get a loader (`data.*` keys)."""

from __future__ import annotations

from dataclasses import dataclass

from data_pipeline.errors import BlockmixError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    """Where the data is and how each rank's batches are made.

    ``batch_size`` is per rank. ``device``: "auto" decodes on the GPU (DALI "mixed") when torch
    sees one, else on the CPU; "cpu" or "gpu" forces it. ``output``: "float" gives normalised
    float32 images; "uint8" gives raw pixels for `loader.normalize` to finish on the device.
    """

    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 256
    val_batch_size: int | None = None
    image_size: int = 224
    val_resize: int = 256
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    device: str = "auto"
    num_threads: int = 4
    seed: int = 0
    output: str = "float"
    channels_last: bool = False
    drop_last: bool = True
    prefetch: int = 2

    def validate(self) -> None:
        """Raise a one-line `BlockmixError` naming the first bad field."""
        if not self.root:
            _fail(
                "root",
                "is empty; set it to a dataset folder (e.g. one `blockmix prepare demo` wrote)",
            )
        for name in ("batch_size", "image_size", "val_resize", "num_threads", "prefetch"):
            if int(getattr(self, name)) < 1:
                _fail(name, f"must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            _fail("seed", f"must be >= 0, got {self.seed}")
        if self.val_batch_size is not None and self.val_batch_size < 1:
            _fail("val_batch_size", f"must be >= 1 or null, got {self.val_batch_size}")
        if self.val_resize < self.image_size:
            _fail(
                "val_resize", f"({self.val_resize}) must be >= data.image_size ({self.image_size})"
            )
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            _fail("scale", f"must satisfy 0 < min <= max <= 1, got {tuple(self.scale)}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            _fail("ratio", f"must satisfy 0 < min <= max, got {tuple(self.ratio)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            _fail("std", "mean and std need 3 values each and std must be > 0")
        if self.device not in ("auto", "cpu", "gpu"):
            _fail("device", f"must be auto, cpu or gpu, got {self.device!r}")
        if self.output not in ("float", "uint8"):
            _fail("output", f"must be float or uint8, got {self.output!r}")

    @property
    def eval_batch_size(self) -> int:
        """Per-rank evaluation batch size (``val_batch_size``, else ``batch_size``)."""
        return self.val_batch_size or self.batch_size


def _fail(field: str, problem: str) -> None:
    raise BlockmixError(f"data.{field} {problem}")
