"""The sample order blockmix owns: which samples each rank reads at each step, and their crops.

Everything here is a pure function of (seed, epoch, global position), so the loader's position is
just (epoch, global cursor) and a run resumes exactly at any world size.

Training: epoch ``e`` visits ``epoch_permutation(N, seed, e)``. A step at global cursor ``c``
takes ``world_size * b`` consecutive positions; rank ``r`` gets ``perm[c + r*b : c + (r+1)*b]``.
``b`` is the batch size, except for a smaller last step when ``drop_last`` is false. Per epoch
at most ``N mod (batch*world)`` samples are dropped (``drop_last``), otherwise fewer than
``world_size``. Concatenating the ranks' batches of a step gives the same global batch at any
world size with the same global batch, which is what makes cross-world-size resume exact.

Evaluation: rank ``r`` reads the strided positions ``r, r + W, r + 2W, ...`` of the split in
file order. Every rank runs the same number of steps with the same batch shapes (collectives,
ZeRO-3 gathers); the positions past the end repeat the last sample and are marked invalid, so
each sample counts exactly once for any world size.

Augmentation parameters (random-resized-crop window, horizontal flip) are drawn per sample from a
counter-based hash of (seed, epoch, sample index), never from a stateful generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_ATTEMPTS = 10  # random-resized-crop tries before the centre-crop fallback (torchvision's rule)


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order (int64 sample indices) in which epoch ``epoch`` visits the split."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


@dataclass(frozen=True)
class TrainOrder:
    """Which positions of the epoch permutation one rank reads at each step."""

    num_samples: int
    batch_size: int
    rank: int
    world_size: int
    drop_last: bool = True

    def step_size(self, cursor: int) -> int:
        """Per-rank batch of the step that starts at global ``cursor``; 0 when the epoch is over."""
        remaining = self.num_samples - cursor
        if remaining >= self.batch_size * self.world_size:
            return self.batch_size
        if self.drop_last:
            return 0
        return remaining // self.world_size

    def positions(self, cursor: int) -> tuple[slice, int]:
        """This rank's slice of the permutation at ``cursor``, and the next global cursor."""
        size = self.step_size(cursor)
        start = cursor + self.rank * size
        return slice(start, start + size), cursor + size * self.world_size

    def steps_from(self, cursor: int) -> int:
        """Steps left in the epoch from global ``cursor``."""
        global_batch = self.batch_size * self.world_size
        full, rest = divmod(self.num_samples - cursor, global_batch)
        return full + int(not self.drop_last and rest >= self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        """Steps in a whole epoch (from cursor 0)."""
        return self.steps_from(0)

    def rank_epoch_indices(self, permutation: np.ndarray) -> np.ndarray:
        """Every sample index this rank reads in a whole epoch, in order (one vectorised slice)."""
        global_batch = self.batch_size * self.world_size
        full = self.num_samples // global_batch
        steps = permutation[: full * global_batch].reshape(full, self.world_size, self.batch_size)
        mine = steps[:, self.rank, :].reshape(-1)
        if self.steps_per_epoch > full:
            last, _ = self.positions(full * global_batch)
            mine = np.concatenate([mine, permutation[last]])
        return mine


@dataclass(frozen=True)
class EvalOrder:
    """Strided, exact-once evaluation positions with a validity mask."""

    num_samples: int
    batch_size: int
    rank: int
    world_size: int

    @property
    def share(self) -> int:
        """Positions per rank (the largest rank's share; smaller shares are padded)."""
        return math.ceil(self.num_samples / self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        """Steps of one evaluation pass, the same on every rank."""
        return math.ceil(self.share / self.batch_size)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample indices of this rank's batch ``step`` and whether each one counts."""
        local = np.arange(step * self.batch_size, min((step + 1) * self.batch_size, self.share))
        positions = local * self.world_size + self.rank
        valid = positions < self.num_samples
        return np.minimum(positions, self.num_samples - 1), valid


def _uniforms(seed: int, epoch: int, indices: np.ndarray, draws: int) -> np.ndarray:
    """(len(indices), draws) uniforms in [0, 1): a splitmix64 hash of (seed, epoch, index, draw)."""
    with np.errstate(over="ignore"):
        state = _mix(np.asarray([seed], dtype=np.uint64))
        state = _mix(state ^ np.uint64(epoch))
        state = _mix(state ^ np.asarray(indices, dtype=np.uint64))
        bits = _mix(state[:, None] ^ np.arange(1, draws + 1, dtype=np.uint64)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def crop_windows(
    sizes: np.ndarray,
    indices: np.ndarray,
    *,
    seed: int,
    epoch: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random-resized-crop windows and flips for samples ``indices`` of image ``sizes`` (H, W).

    Returns int32 anchors (x, y), int32 shapes (w, h) and uint8 flips, one row per sample; the
    sampling rule is torchvision's RandomResizedCrop (10 tries, then a ratio-clamped centre crop).
    """
    height = sizes[:, 0].astype(np.float64)[:, None]
    width = sizes[:, 1].astype(np.float64)[:, None]
    u = _uniforms(seed, epoch, indices, 4 * _ATTEMPTS + 1)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, 0:_ATTEMPTS])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[:, _ATTEMPTS : 2 * _ATTEMPTS])
    w = np.round(np.sqrt(area * aspect))
    h = np.round(np.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    y = np.floor(u[:, 2 * _ATTEMPTS : 3 * _ATTEMPTS] * (height - h + 1))
    x = np.floor(u[:, 3 * _ATTEMPTS : 4 * _ATTEMPTS] * (width - w + 1))
    found = fits.any(axis=1)
    first = fits.argmax(axis=1)
    rows = np.arange(len(indices))
    pick = np.stack([x[rows, first], y[rows, first], w[rows, first], h[rows, first]], axis=1)
    if not found.all():
        pick[~found] = _centre_windows(height[~found, 0], width[~found, 0], ratio)
    flips = (u[:, -1] < 0.5).astype(np.uint8)
    return pick[:, :2].astype(np.int32), pick[:, 2:].astype(np.int32), flips


def _centre_windows(
    height: np.ndarray, width: np.ndarray, ratio: tuple[float, float]
) -> np.ndarray:
    """torchvision's fallback: the whole image, aspect clamped to ``ratio``, centred; (x, y, w, h)."""
    aspect = width / height
    w = np.where(
        aspect < ratio[0], width, np.where(aspect > ratio[1], np.round(height * ratio[1]), width)
    )
    h = np.where(aspect < ratio[0], np.round(width / ratio[0]), height)
    return np.stack([(width - w) // 2, (height - h) // 2, w, h], axis=1)
