"""`TextLogger` lines, `LoggerGroup` fan-out and the loader position of a resume line."""

from __future__ import annotations

import logging

import numpy as np

from train.textlog import LoggerGroup, TextLogger, loader_position

TRAIN = {
    "train/loss": 0.41234,
    "train/top1": 87.5,
    "train/top5": 99.0,
    "train/lr": 0.0912,
    "train/epoch": 1.3333,
    "perf/images_per_s": 412.26,
    "perf/step_time_s": 0.25,
    "perf/data_time_s": 0.0021,
}


def test_a_training_line_has_step_epoch_loss_top1_lr_speed_data_time_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="train")
    TextLogger(600).log(TRAIN, 120)
    (line,) = caplog.messages
    assert line == (
        "step 120/600 epoch 1.33 loss 0.4123 top1 87.50 top5 99.00 lr 0.0912 img/s 412.3 "
        "data 2.1ms eta 0:02:00"
    )


def test_multitask_and_val_lines(caplog):
    caplog.set_level(logging.INFO, logger="train")
    logger = TextLogger(10)
    logger.log({"train/digits/loss": 1.5, "train/photo/top1": 20.0, "train/lr": 0.1}, 10)
    logger.log({"val/loss": 0.3, "val/top1": 91.0, "val/top5": 99.5}, 10)
    logger.log_hparams({"lr": 0.1}, {"hparams/top1": 91.0})
    assert caplog.messages == [
        "step 10/10 digits/loss 1.5000 photo/top1 20.00 lr 0.1",
        "step 10 val loss 0.3000 top1 91.00 top5 99.50",
        "final top1 91.00",
    ]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def log(self, metrics, step):
        self.calls.append(("log", step))

    def log_alphas(self, alphas, step, coefficients="softmax"):
        self.calls.append(("alphas", step, coefficients))

    def log_hparams(self, hparams, metrics):
        self.calls.append(("hparams",))

    def close(self):
        self.calls.append(("close",))


def test_group_hands_every_report_to_each_logger():
    first, second = Recorder(), Recorder()
    group = LoggerGroup(first, second)
    group.log({"train/loss": 1.0}, 3)
    group.log_alphas({(0, "bank"): np.eye(2)}, 3, "linear")
    group.log_hparams({}, {})
    group.close()
    assert (
        first.calls
        == second.calls
        == [
            ("log", 3),
            ("alphas", 3, "linear"),
            ("hparams",),
            ("close",),
        ]
    )


class Loader:
    def state_dict(self):
        return {"epoch": 2, "cursor": 384, "seed": 0, "num_samples": 1437}


def test_loader_position_names_epoch_and_sample():
    assert loader_position({"loader": Loader(), "rng": object()}) == "loader epoch 2, sample 384"
    assert loader_position({}) == "no loader position"
