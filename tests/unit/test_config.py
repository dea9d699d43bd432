"""The typed config tree: named configs, dotted overrides, validation, the resolved file."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.config import Config, load_config, named_configs, save_config
from train.errors import BlockmixError

ROOT = "data.root=/data/imagenet"


def test_overrides_are_typed_and_applied() -> None:
    config = load_config(
        "demo",
        [
            ROOT,
            "train.steps=7",
            "train.zero_stage=3",
            "model.variant=tmix",
            "model.mode=deeper",
            "run.seed=5",
            "checkpoint.every=3",
            "data.scale=[0.5,1.0]",
        ],
    )
    assert isinstance(config, Config)
    assert (config.train.steps, config.train.zero_stage, config.run.seed) == (7, 3, 5)
    assert (config.model.variant, config.model.mode, config.checkpoint.every) == (
        "tmix",
        "deeper",
        3,
    )
    assert config.data.scale == (0.5, 1.0) and config.data.root == "/data/imagenet"
    assert config.model.options["width"] == 32  # the named config's value survives


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.steps=abc", "train.steps"),
        ("train.bogus=1", "train.bogus"),
        ("model.variant=big", "model.variant"),
        ("model.mode=wider", "model.mode"),
        ("train.zero_stage=4", "train.zero_stage"),
        ("optim.name=rmsprop", "optim.name"),
        ("checkpoint.keep=0", "checkpoint.keep"),
        ("train.steps", "key=value"),
        ("data.batch_size=0", "data.batch_size"),
    ],
)
def test_bad_overrides_name_the_field(override: str, named: str) -> None:
    with pytest.raises(BlockmixError, match=named.replace(".", r"\.")):
        load_config("demo", [ROOT, override])


def test_mode_needs_tmix() -> None:
    with pytest.raises(BlockmixError, match=r"model\.mode"):
        load_config("demo", [ROOT, "model.mode=compact"])


def test_unknown_named_config_lists_the_names() -> None:
    with pytest.raises(BlockmixError, match="demo"):
        load_config("no_such_config")


@pytest.mark.parametrize("name", named_configs())
def test_every_named_config_loads(name: str) -> None:
    config = load_config(name, [ROOT])
    assert config.train.steps > 0 or config.train.epochs > 0


def test_imagenet_recipes_cover_every_model_as_baseline_and_tmix() -> None:
    from train.models import list_models

    for model in list_models():
        base = load_config(f"imagenet_{model}", [ROOT])
        tmix = load_config(f"imagenet_{model}_tmix", [ROOT])
        assert (base.model.name, base.model.variant) == (model, "baseline")
        assert (tmix.model.name, tmix.model.variant) == (model, "tmix")
        assert tmix.model.mode is not None
        assert tmix.optim == base.optim and tmix.train == base.train


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = load_config(
        "demo", [ROOT, "train.steps=9", "deepspeed.extra.zero_optimization.reduce_bucket_size=100"]
    )
    path = tmp_path / "config.yaml"
    save_config(config, path)
    assert load_config(str(path)) == config


def test_base_chain_and_file_errors(tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text("_base_: demo\ntrain:\n  steps: 3\n")
    config = load_config(str(child), [ROOT])
    assert config.train.steps == 3 and config.model.options["width"] == 32
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1, 2\n")
    with pytest.raises(BlockmixError, match=r"bad\.yaml"):
        load_config(str(bad), [ROOT])
    with pytest.raises(BlockmixError, match=r"missing\.yaml"):
        load_config(str(tmp_path / "missing.yaml"))


def test_method_settings_are_typed_config() -> None:
    config = load_config(
        "demo",
        [
            ROOT,
            "model.variant=tmix",
            "model.mixing.coefficients=linear",
            "model.mixing.init=orthogonal",
            "model.mixing.temperature=0.5",
            "model.mixing.init_scale=0.1",
            "model.mixing.identity_logit=2",
            "model.mixing.rescale_templates=false",
            "model.templates=[3]",
            "optim.logits_lr_scale=10",
        ],
    )
    mixing = config.model.mixing
    assert (mixing.coefficients, mixing.init, mixing.temperature) == ("linear", "orthogonal", 0.5)
    assert (mixing.init_scale, mixing.identity_logit, mixing.rescale_templates) == (0.1, 2.0, False)
    assert config.optim.logits_lr_scale == 10.0
    assert config.model.build_kwargs()["templates"] == (3,)
    assert config.model.build_kwargs()["mixing"] is mixing


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.mixing.init=bogus", r"model\.mixing\.init: unknown 'bogus'"),
        ("model.mixing.coefficients=sigmoid", r"model\.mixing\.coefficients"),
        ("model.mixing.temperature=0", r"model\.mixing\.temperature"),
        ("model.mixing.bogus=1", r"model\.mixing\.bogus"),
        ("model.options.widht=3", r"model\.options\.widht .*did you mean width\?"),
        ("model.options.width=abc", r"model\.options\.width='abc' is not of type int"),
        ("model.options.width_multiplier=wide", r"model\.options\.width_multiplier"),
        ("model.options.variant=tmix", r"model\.options\.variant shadows model\.variant"),
        ("model.options.num_classes=5", r"model\.options\.num_classes shadows"),
        ("model.options.templates=2", r"model\.options\.templates shadows model\.templates"),
        ("model.options.blocks=0", r"isometric sizes must be >= 1"),
        ("model.templates=0", r"model\.templates must be an int >= 1"),
        ("model.templates=[2,3]", r"model\.templates: give one int or 1 values"),
        ("optim.logits_lr_scale=0", r"optim\.logits_lr_scale"),
        ("optim.lr=nan", r"optim\.lr must be a finite number"),
        ("model.name=resnet99", r"model\.name='resnet99' is not a registered model"),
    ],
)
def test_bad_model_settings_fail_when_loading(override: str, message: str) -> None:
    with pytest.raises(BlockmixError, match=message):
        load_config("demo", [ROOT, "model.variant=tmix", override])


def test_templates_and_a_matched_mode_exclude_each_other() -> None:
    with pytest.raises(BlockmixError, match=r"model\.templates applies without model\.mode"):
        load_config("demo", [ROOT, "model.variant=tmix", "model.mode=deeper", "model.templates=2"])


def test_resnet_depths_are_checked_as_int_tuples() -> None:
    config = load_config("imagenet_resnet18", [ROOT, "model.options.depths=[1,1,1,1]"])
    assert config.model.options["depths"] == [1, 1, 1, 1]
    with pytest.raises(BlockmixError, match=r"model\.options\.depths"):
        load_config("imagenet_resnet18", [ROOT, "model.options.depths=[1,x,1,1]"])


@pytest.mark.parametrize("command", ["train", "submit", "sweep"])
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.options.widht=3", "model.options.widht is not a size of isometric"),
        ("model.mixing.init=bogus", "model.mixing.init: unknown 'bogus'"),
    ],
)
def test_bad_model_settings_exit_2_before_anything_runs_or_queues(
    command, override, message, tmp_path, monkeypatch, capsys
) -> None:
    from train.cli import main

    (tmp_path / "cluster.yaml").write_text(f"run_root: {tmp_path}\nexecutor: local\n")
    monkeypatch.setenv("BLOCKMIX_CLUSTER_CONFIG", str(tmp_path / "cluster.yaml"))
    run = f"run.dir={tmp_path / 'run'}"
    if command == "sweep":
        sweep = tmp_path / "s.yaml"
        sweep.write_text("config: demo\nmodes: [deeper]\nseeds: [0]\ndir: sw\n")
        argv = ["sweep", str(sweep), ROOT, override, "--dry-run"]
    else:
        argv = [command, "demo", ROOT, run, "model.variant=tmix", override]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert (
        sorted(path.name for path in tmp_path.iterdir())
        == ["cluster.yaml", "s.yaml"][: 1 + (command == "sweep")]
    )
