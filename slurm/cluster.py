"""Cluster-specific defaults for SLURM jobs: the one place a user edits.

Edit the defaults of `ClusterConfig` below, or, without touching the code, write the fields that
differ into ``~/.config/blockmix/cluster.yaml`` (or a file named by ``$BLOCKMIX_CLUSTER_CONFIG``)::

    partition: gpu
    account: my-project
    qos: normal
    run_root: /shared/$USER/blockmix/runs

Command-line flags of ``blockmix submit`` override single fields for one job. Every value that
reaches SLURM is checked, so that no newline or shell metacharacter can slip into a batch script.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from train.errors import BlockmixError

USER_CONFIG = Path("~/.config/blockmix/cluster.yaml")
CONFIG_ENV = "BLOCKMIX_CLUSTER_CONFIG"
EXECUTORS = ("slurm", "local", "debug")

# Names (partition lists, accounts, QOS, job names): no shell metacharacter, space or newline.
NAME_SYMBOLS = "_.,+=:@%/-"
# Constraints may also use SLURM's operators: "a100&ib", "[rack1|rack2]", "[gpu*2&cpu*4]".
CONSTRAINT_SYMBOLS = NAME_SYMBOLS + "&|[]()*"


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how jobs run. Empty SLURM fields leave the choice to the cluster's defaults.

    ``run_root`` (under which relative run directories go) and ``log_root`` (submitit's pickles
    and job logs; relative means under ``run_root``) must be on storage that every node sees;
    ``$VARS`` and ``~`` are expanded. ``cpus_per_task`` is per task, i.e. per GPU on GPU partitions.
    ``signal_delay_s`` is how long before the time limit the job is told to checkpoint and requeue;
    ``max_timeout_requeues`` bounds requeues after time-outs (preemptions are always requeued).
    """

    executor: str = "slurm"
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    time_min: int = 60
    cpus_per_task: int = 1
    mem_gb: int = 0
    signal_delay_s: int = 120
    max_timeout_requeues: int = 3
    run_root: str = "."
    log_root: str = "runs/submitit"

    def with_overrides(self, **overrides: Any) -> ClusterConfig:
        """A validated copy with the given fields replaced; ``None`` values are ignored."""
        updated = replace(
            self, **{key: value for key, value in overrides.items() if value is not None}
        )
        validate(updated)
        return updated

    def resolve(self, path: str | Path) -> Path:
        """``path`` made absolute; a relative path is taken to be under ``run_root``."""
        expanded = _expand(str(path))
        return Path(os.path.abspath(_expand(self.run_root) / expanded))

    @property
    def log_dir(self) -> Path:
        return self.resolve(self.log_root)


def validate(config: ClusterConfig, where: str = "cluster config") -> None:
    """Refuse values that SLURM would reject or that could inject lines into a batch script."""
    if config.executor not in EXECUTORS:
        raise BlockmixError(
            f"{where}: executor {config.executor!r} is not one of {', '.join(EXECUTORS)}"
        )
    for name in ("partition", "account", "qos"):
        check_slurm_name(getattr(config, name), f"{where}: {name}")
    check_slurm_name(config.constraint, f"{where}: constraint", symbols=CONSTRAINT_SYMBOLS)
    for name in ("time_min", "cpus_per_task"):
        if getattr(config, name) < 1:
            raise BlockmixError(f"{where}: {name} must be at least 1, got {getattr(config, name)}")
    for name in ("mem_gb", "signal_delay_s", "max_timeout_requeues"):
        if getattr(config, name) < 0:
            raise BlockmixError(
                f"{where}: {name} must not be negative, got {getattr(config, name)}"
            )
    for name in ("run_root", "log_root"):
        value = getattr(config, name)
        if not value or "\n" in value or "\0" in value:
            raise BlockmixError(f"{where}: {name} must be a non-empty path on one line")


def check_slurm_name(value: str, field: str, symbols: str = NAME_SYMBOLS) -> None:
    """Refuse a value for SLURM (empty means unset) with characters other than ASCII letters,
    digits and ``symbols``."""
    bad = sorted({char for char in value if not (_is_alnum(char) or char in symbols)})
    if bad:
        shown = ", ".join(repr(char) for char in bad)
        raise BlockmixError(
            f"{field}: {value!r} holds {shown}; use only letters, digits and {' '.join(symbols)}"
        )


def load_cluster_config(path: str | Path | None = None) -> ClusterConfig:
    """The defaults above, updated by the user's file (``path``, ``$BLOCKMIX_CLUSTER_CONFIG`` or
    ``~/.config/blockmix/cluster.yaml``, whichever is given first), validated."""
    explicit = path or os.environ.get(CONFIG_ENV)
    file = Path(explicit).expanduser() if explicit else USER_CONFIG.expanduser()
    if not file.is_file():
        if explicit:
            raise BlockmixError(f"cluster config {file} does not exist")
        config = ClusterConfig()
        validate(config)
        return config
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise BlockmixError(f"cluster config {file}: not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise BlockmixError(f"cluster config {file}: the top level must be a mapping of fields")
    unknown = sorted(set(data) - {item.name for item in fields(ClusterConfig)})
    if unknown:
        raise BlockmixError(
            f"cluster config {file}: unknown field(s) {', '.join(map(str, unknown))}; "
            f"fields: {', '.join(item.name for item in fields(ClusterConfig))}"
        )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ClusterConfig), data)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", "") or "?"
        message = str(error).splitlines()[0]
        raise BlockmixError(f"cluster config {file}: field {key}: {message}") from None
    config = ClusterConfig(**OmegaConf.to_container(merged))
    validate(config, where=f"cluster config {file}")
    return config


def _expand(path: str) -> Path:
    return Path(os.path.expandvars(path)).expanduser()


def _is_alnum(char: str) -> bool:
    return char.isascii() and char.isalnum()
