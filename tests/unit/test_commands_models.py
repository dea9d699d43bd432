"""`blockmix models` and `blockmix params`: output, JSON keys, exit codes."""

import json

import pytest

from train.cli import main
from train.models import list_models


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert "11,689,512" in out


def test_params_json_for_a_matched_pair(capsys):
    assert main(["params", "resnet18", "--mode", "compact", "--num-classes", "10", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"baseline", "tmix", "rel_diff"} <= report.keys()
    for side in ("baseline", "tmix"):
        assert report[side]["params"] > 0 and report[side]["flops"] > 0
    assert abs(report["rel_diff"]) <= 0.005
    assert report["tmix"]["banks"]["stages.0.bank"] == {"templates": 1, "positions": 2}


def test_params_table(capsys):
    assert main(["params", "mobilenet_v2"]) == 0
    out = capsys.readouterr().out
    assert "3,504,872" in out and "GFLOPs/image" in out and "templates/positions" in out


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["params", "resnet9"], "resnet18, resnet34"),
        (["params", "resnet18", "--mode", "wider"], "deeper, compact"),
    ],
)
def test_unknown_model_or_mode_is_one_line_exit_2(capsys, argv, names):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and names in err
