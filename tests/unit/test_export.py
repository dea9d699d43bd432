"""`blockmix export` files that stand alone (config, model and version in the metadata), `--bake`
and `--format torchvision` on the real runs of the session's sweep."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors import safe_open

from train.cli import main
from train.config import load_config
from train.export import load_model, load_weights
from train.taskmodel import build_model
from train.textlog import version

RUN = "isometric-tmix-deeper-s0"


def _metadata(path) -> dict[str, str]:
    with safe_open(str(path), "pt") as file:
        return file.metadata()


@pytest.fixture(scope="module")
def exports(real_sweep, tmp_path_factory):
    run = real_sweep.sweep_dir / "runs" / RUN
    out = tmp_path_factory.mktemp("exports")
    assert main(["export", str(run), "--out", str(out / "tmix.safetensors")]) == 0
    assert main(["export", str(run), "--out", str(out / "baked.safetensors"), "--bake"]) == 0
    return run, out


def test_an_export_needs_nothing_else(exports):
    run, out = exports
    metadata = _metadata(out / "tmix.safetensors")
    assert metadata["blockmix_version"] == version() and metadata["format"] == "blockmix"
    assert yaml.safe_load(metadata["config"]) == yaml.safe_load((run / "config.yaml").read_text())
    model = load_model(out / "tmix.safetensors")  # no run directory, no config file
    reference = build_model(load_config(str(run / "config.yaml")))
    load_weights(reference, out / "tmix.safetensors").eval()
    assert model.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_baked_export_is_the_plain_network_with_the_same_outputs(exports):
    _, out = exports
    mixed, baked = load_model(out / "tmix.safetensors"), load_model(out / "baked.safetensors")
    assert any(stage.bank is not None for stage in mixed.stages)
    assert baked.config.variant == "baseline" and all(s.bank is None for s in baked.stages)
    assert not any(key.endswith(("templates", "logits")) for key in baked.state_dict())
    positions = [len(stage.blocks) for stage in mixed.stages]
    assert [len(stage.blocks) for stage in baked.stages] == positions
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(baked(x), mixed(x), rtol=1e-4, atol=1e-5)


def test_wrong_export_requests_are_one_line(exports, capsys, tmp_path):
    run, _ = exports
    torchvision = ["export", str(run), "--out", str(tmp_path / "t.safetensors")]
    assert main([*torchvision, "--format", "torchvision"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--format torchvision needs" in err
    assert not (tmp_path / "t.safetensors").exists()
    assert main([*torchvision, "--bake", "--task", "1"]) == 2
    assert "--task 1 is out of range" in capsys.readouterr().err
