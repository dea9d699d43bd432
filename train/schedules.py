"""Learning-rate schedules: pure functions of the optimizer step, so a resume saves only the step."""

from __future__ import annotations

import math


def warmup_cosine(
    step: int, *, lr: float, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> float:
    """The rate for optimizer step ``step`` (0-based).

    Linear warmup reaches ``lr`` at step ``warmup_steps - 1``; then a cosine decays it to
    ``min_lr_ratio * lr`` at the last step ``total_steps - 1`` (and stays there after).
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps - 1, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    floor = min_lr_ratio * lr
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
