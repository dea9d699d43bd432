"""Metrics count each valid sample once; the step timer's window."""

from __future__ import annotations

import math

import pytest
import torch

from train.metrics import ClassificationMetrics, StepTimer, evaluate


def test_padding_is_left_out_and_topk_is_right() -> None:
    metrics = ClassificationMetrics(num_classes=6)
    logits = torch.tensor([[9.0, 1, 0, 0, 0, 0], [0, 9.0, 8, 7, 6, 5], [0, 0, 0, 0, 1, 9.0]])
    labels = torch.tensor([0, 0, 0])  # right; 6th best; right but padding
    losses = torch.tensor([1.0, 3.0, 100.0])
    metrics.update(logits, labels, losses, torch.tensor([True, True, False]))
    got = metrics.compute()
    assert got == {"loss": 2.0, "top1": 50.0, "top5": 50.0}
    metrics.reset()
    metrics.update(logits[:1], labels[:1], losses[:1])
    assert metrics.compute()["top1"] == 100.0


def test_evaluate_runs_a_forward_over_batches() -> None:
    model = torch.nn.Linear(6, 6, bias=False)
    torch.nn.init.eye_(model.weight)  # the logits are the images
    ranked = [5.0, 4, 3, 2, 1, 0]
    batches = [
        (  # label 0: top-1; label 4: 5th best (top-5 only); label 5: 6th; padding
            torch.tensor([ranked, ranked, ranked, [0, 0, 0, 0, 0, 9.0]]),
            torch.tensor([0, 4, 5, 5]),
            torch.tensor([True, True, True, False]),
        ),
        (torch.tensor([[0, 0, 0, 0, 0, 9.0]]), torch.tensor([5]), torch.tensor([True])),
    ]
    got = evaluate(model, batches, ClassificationMetrics(6), "cpu")
    ranked_lse = 5 + math.log(sum(math.exp(-k) for k in range(6)))
    spike_lse = 9 + math.log(1 + 5 * math.exp(-9))
    losses = [ranked_lse - 5, ranked_lse - 1, ranked_lse - 0, spike_lse - 9]
    assert got["top1"] == 50.0 and got["top5"] == 75.0
    assert got["loss"] == pytest.approx(sum(losses) / 4, rel=1e-6)


def test_step_timer_window() -> None:
    timer = StepTimer()
    timer.add(64, 0.01)
    timer.add(64, 0.03)
    window = timer.window()
    assert window["data_time_s"] == 0.02 and window["images_per_s"] > 0
    assert timer.steps == 0  # the window restarts
