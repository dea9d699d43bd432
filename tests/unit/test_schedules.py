"""Warmup + cosine as a pure function of the step."""

from __future__ import annotations

import itertools

import pytest

from train.schedules import warmup_cosine


def test_warmup_then_cosine() -> None:
    lrs = [
        warmup_cosine(s, lr=1.0, total_steps=20, warmup_steps=5, min_lr_ratio=0.1)
        for s in range(25)
    ]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[5] == pytest.approx(1.0)
    assert lrs[19] == pytest.approx(0.1)
    assert lrs[24] == pytest.approx(0.1)
    decay = lrs[5:20]
    assert all(a > b for a, b in itertools.pairwise(decay))
    assert lrs[12] == pytest.approx(0.55)  # halfway through the decay: the mean of peak and floor


def test_no_warmup_starts_at_the_peak() -> None:
    assert warmup_cosine(0, lr=0.3, total_steps=10) == pytest.approx(0.3)
    assert warmup_cosine(9, lr=0.3, total_steps=10) == pytest.approx(0.0)


def test_is_a_pure_function_of_the_step() -> None:
    # warmup step 0 reaches the peak; then 9 decay steps: cos(pi/3) = 0.5, cos(2 pi/3) = -0.5
    args = {"lr": 0.4, "total_steps": 11, "warmup_steps": 1}
    expected = {0: 0.4, 4: 0.4 * 0.75, 7: 0.4 * 0.25, 10: 0.0}
    for order in ([0, 4, 7, 10], [10, 7, 4, 0], [7, 0, 10, 4, 7]):
        assert [warmup_cosine(s, **args) for s in order] == pytest.approx(
            [expected[s] for s in order], abs=1e-12
        )
