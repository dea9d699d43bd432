"""The one user-facing error type of blockmix, defined in the bottom layer (`data_pipeline.errors`)
and importable from here by `train` and `slurm` code."""

from data_pipeline.errors import BlockmixError

__all__ = ["BlockmixError"]
