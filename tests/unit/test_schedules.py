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
    args = {"lr": 0.1, "total_steps": 100, "warmup_steps": 10}
    assert [warmup_cosine(s, **args) for s in (3, 50, 3)] == [
        warmup_cosine(s, **args) for s in (3, 50, 3)
    ]
