"""The `blockmix` entry point itself: --version, a closed pipe, logging set-up."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from train.cli import main
from train.textlog import configure_logging

BLOCKMIX = str(Path(sys.executable).with_name("blockmix"))


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"blockmix {version('blockmix')}"


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_closed_pipe_ends_quietly(unbuffered):
    # `true` exits at once, so every write of blockmix meets a closed pipe (`... | head -1`)
    proc = subprocess.run(
        f"'{BLOCKMIX}' config list | true; echo ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": unbuffered},
    )
    assert proc.stdout.strip() == "141"  # 128 + SIGPIPE, as a tool killed by SIGPIPE
    assert proc.stderr == ""


def test_logging_is_info_on_rank_0_and_warnings_elsewhere():
    try:
        configure_logging({"RANK": "1"})
        assert not logging.getLogger("train.trainer").isEnabledFor(logging.INFO)
        assert logging.getLogger("slurm.tasks").isEnabledFor(logging.WARNING)
        configure_logging({"SLURM_PROCID": "0"})
        assert logging.getLogger("train.trainer").isEnabledFor(logging.INFO)
        assert logging.getLogger("data_pipeline.loader").isEnabledFor(logging.INFO)
    finally:
        configure_logging({})
