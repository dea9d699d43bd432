"""`blockmix config show/list`, `_base_` relative to its file, and $BLOCKMIX_CONFIG_PATH."""

from __future__ import annotations

import os

import pytest
import yaml

from train.cli import main
from train.config import load_config, named_configs
from train.provenance import show, sources


def test_show_prints_the_resolved_tree_and_where_each_set_value_came_from(capsys):
    args = ["demo_transfer", "train.steps=5", "data.root=/d"]
    assert main(["config", "show", *args]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "  steps: 5  # from override" in lines
    assert "  name: isometric  # from demo.yaml" in lines  # two _base_ levels down
    assert "  variant: tmix  # from demo_multitask.yaml" in lines
    assert "  source_task: 1  # from demo_transfer.yaml" in lines
    assert "  seed: 0" in lines  # a default: no comment
    assert "tasks:  # from demo_transfer.yaml" in lines
    assert "not runnable" not in out
    resolved = yaml.safe_load(out)  # the comments keep it valid YAML of the resolved config
    config = load_config(*args[:1], args[1:])
    assert resolved["train"]["steps"] == config.train.steps == 5
    assert resolved["optim"]["weight_decay"] == config.optim.weight_decay
    assert resolved["tasks"][0]["name"] == config.tasks[0].name


def test_show_says_what_is_missing_and_rejects_a_wrong_key(capsys):
    text = show("demo")
    assert text.splitlines()[-1].startswith("# not runnable as it is: data.root is empty")
    assert main(["config", "show", "demo", "train.stpes=5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.stpes" in err


def test_override_of_a_mapping_marks_its_leaves():
    found = sources("demo", ["model.options={width: 8, blocks: 2}"])
    assert found["model.options.width"] == found["model.options.blocks"] == "override"
    assert found["model.options.expansion"] == "demo.yaml"


def test_list_names_every_config_with_its_first_comment_line(capsys):
    assert main(["config", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(named_configs())
    demo = next(line for line in lines if line.startswith("demo "))
    assert "The built-in digits data" in demo


def test_base_is_relative_to_the_file_that_names_it(tmp_path, monkeypatch):
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "common.yaml").write_text("_base_: demo\ntrain:\n  steps: 7\n")
    (tmp_path / "team" / "mine.yaml").write_text("_base_: common.yaml\noptim:\n  lr: 0.3\n")
    monkeypatch.chdir(tmp_path)  # not the folder of mine.yaml
    config = load_config("team/mine.yaml", ["data.root=/d"])
    assert (config.train.steps, config.optim.lr, config.model.options["width"]) == (7, 0.3, 32)
    found = sources("team/mine.yaml")
    assert found["train.steps"] == str((tmp_path / "team" / "common.yaml").resolve())


def test_missing_base_file_names_the_file_that_asks_for_it(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("_base_: nowhere.yaml\n")
    assert main(["config", "show", str(tmp_path / "a.yaml")]) == 2
    err = capsys.readouterr().err
    assert "a.yaml: _base_ config file" in err and "nowhere.yaml does not exist" in err


def test_config_path_adds_named_configs(tmp_path, monkeypatch, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    (first / "lab.yaml").write_text("# Our lab's recipe.\n_base_: demo\ntrain:\n  steps: 3\n")
    (second / "lab.yaml").write_text("# Shadowed by the first folder.\ntrain:\n  steps: 4\n")
    (second / "other.yaml").write_text("# Another one.\n_base_: lab\n")
    monkeypatch.setenv("BLOCKMIX_CONFIG_PATH", os.pathsep.join([str(first), str(second)]))
    assert load_config("other", ["data.root=/d"]).train.steps == 3
    assert main(["config", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    lab = next(line for line in lines if line.startswith("lab "))
    assert "Our lab's recipe." in lab and str(first) in lab
    assert any(line.startswith("demo ") for line in lines)
    assert sources("other")["train.steps"] == "lab.yaml"


def test_unknown_name_lists_the_folders(tmp_path, monkeypatch):
    from train.errors import BlockmixError

    monkeypatch.setenv("BLOCKMIX_CONFIG_PATH", str(tmp_path))
    with pytest.raises(BlockmixError, match="BLOCKMIX_CONFIG_PATH") as error:
        load_config("nope")
    assert str(tmp_path) in str(error.value)
