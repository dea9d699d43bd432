"""slurm.cluster: the user's cluster defaults, their file, and the checks on values for SLURM."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm.cluster import CONFIG_ENV, ClusterConfig, load_cluster_config
from slurm.submit import Resources, make_executor
from train.errors import BlockmixError

BAD_NAMES = ["gpu\n#SBATCH --qos=high", "a;b", "$(id)", "`id`", "a b", "a|b", "x>y", "a'b", "é"]


@pytest.fixture(autouse=True)
def no_user_file(monkeypatch, tmp_path):
    """Keep the developer's own ~/.config/blockmix/cluster.yaml out of these tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CONFIG_ENV, raising=False)


def test_defaults_without_a_user_file():
    assert load_cluster_config() == ClusterConfig()


def test_user_file_overrides_fields(tmp_path, monkeypatch):
    home_file = tmp_path / "home" / ".config" / "blockmix" / "cluster.yaml"
    home_file.parent.mkdir(parents=True)
    home_file.write_text("partition: gpu\naccount: proj-1\ntime_min: 240\n")
    config = load_cluster_config()
    assert (config.partition, config.account, config.time_min) == ("gpu", "proj-1", 240)
    assert config.qos == ClusterConfig().qos
    other = tmp_path / "other.yaml"
    other.write_text("partition: cpu\n")
    monkeypatch.setenv(CONFIG_ENV, str(other))
    assert load_cluster_config().partition == "cpu"  # the environment variable wins
    assert load_cluster_config(home_file).partition == "gpu"  # an explicit path wins


def test_paths_expand_and_resolve_under_run_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCH", "/scratch/me")
    config = ClusterConfig(run_root="$SCRATCH/blockmix", log_root="logs")
    assert config.resolve("runs/demo") == Path("/scratch/me/blockmix/runs/demo")
    assert config.resolve("/abs/run") == Path("/abs/run")
    assert config.log_dir == Path("/scratch/me/blockmix/logs")
    assert ClusterConfig(log_root="~/logs").log_dir == tmp_path / "home" / "logs"
    monkeypatch.chdir(tmp_path)
    assert ClusterConfig().resolve("runs/x") == tmp_path / "runs" / "x"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("partiton: gpu\n", "unknown field(s) partiton"),
        ("time_min: soon\n", "field time_min"),
        ("- gpu\n", "top level must be a mapping"),
        ("partition: [gpu\n", "not valid YAML"),
        ("partition: 'gpu;reboot'\n", "partition: 'gpu;reboot' holds ';'"),
        ("executor: kubernetes\n", "executor 'kubernetes' is not one of slurm, local, debug"),
        ("cpus_per_task: 0\n", "cpus_per_task must be at least 1"),
    ],
)
def test_bad_user_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(BlockmixError) as raised:
        load_cluster_config(path)
    assert message in str(raised.value)
    assert str(path) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(BlockmixError, match="does not exist"):
        load_cluster_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (field, value)
        for field in ("partition", "account", "qos", "constraint")
        for value in BAD_NAMES
        if (field, value) != ("constraint", "a|b")  # | is SLURM's OR in constraints
    ],
)
def test_values_for_slurm_refuse_newlines_and_shell_metacharacters(field, value):
    with pytest.raises(BlockmixError, match=f"{field}: ") as raised:
        ClusterConfig().with_overrides(**{field: value})
    assert "\n" not in str(raised.value)


def test_plain_values_and_constraint_operators_are_accepted():
    config = ClusterConfig().with_overrides(
        partition="gpu,gpu-long", account="proj_1", qos="normal", constraint="[a100&ib|h100*2]"
    )
    assert config.constraint == "[a100&ib|h100*2]"
    assert ClusterConfig().with_overrides(partition=None) == ClusterConfig()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_job_name_is_checked(tmp_path, name):
    config = ClusterConfig(executor="local", log_root=str(tmp_path))
    with pytest.raises(BlockmixError, match="job name"):
        make_executor(config, Resources(), name)


def test_resources_and_executor_checks(tmp_path):
    assert Resources(nodes=2, gpus_per_node=4).tasks_per_node == 4
    assert Resources(nodes=2).tasks_per_node == 1  # one task per node on CPU-only partitions
    local = ClusterConfig(executor="local", log_root=str(tmp_path))
    with pytest.raises(BlockmixError, match="use --nodes 1"):
        make_executor(local, Resources(nodes=2), "job")
    with pytest.raises(BlockmixError, match="--nodes must be at least 1"):
        make_executor(local, Resources(nodes=0), "job")
    executor = make_executor(local, Resources(gpus_per_node=2), "job")
    assert executor.parameters["tasks_per_node"] == 2
