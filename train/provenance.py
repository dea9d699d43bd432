"""Where each value of a resolved config came from: the defaults, a config file, or an override.

`show` renders the merged tree as YAML whose values set by a file or an override carry a
trailing ``# from FILE`` / ``# from override`` comment; values without one are the defaults of
`train.config`. `first_comment` reads the one-line description at the top of a named config.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from train.config import BASE_KEY, config_chain, config_dirs, merged_config, validate
from train.errors import BlockmixError

OVERRIDE = "override"


def sources(name: str, overrides: Sequence[str] = ()) -> dict[str, str]:
    """Dotted key -> where its value was last set (file label or ``override``), for every key a
    file of the chain or an override sets; a mapping's keys are listed leaf by leaf."""
    found: dict[str, str] = {}
    for path in config_chain(name):
        data = yaml.safe_load(path.read_text()) or {}
        data.pop(BASE_KEY, None)
        found.update(dict.fromkeys(_leaves(data), file_label(path)))
    for item in overrides:
        tree = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
        found.update(dict.fromkeys(_leaves(tree), OVERRIDE))
    return found


def show(name: str, overrides: Sequence[str] = ()) -> str:
    """The merged config as annotated YAML; a last comment line says what `validate` finds
    wrong with it, if anything (e.g. ``data.root`` still to set)."""
    config = merged_config(name, overrides)
    tree = OmegaConf.to_container(OmegaConf.structured(config))
    lines = [
        f"# blockmix config show {' '.join([name, *overrides])}",
        "# values without a comment are the defaults (train/config.py)",
    ]
    _render(tree, "", 0, sources(name, overrides), lines)
    try:
        validate(config)
    except BlockmixError as error:
        lines.append(f"# not runnable as it is: {error}")
    return "\n".join(lines)


def file_label(path: Path) -> str:
    """A named config's file name (``demo.yaml``), any other file's full path."""
    named = any(path.parent == folder.resolve() for folder in config_dirs())
    return path.name if named else str(path)


def first_comment(path: Path) -> str:
    """The first comment line of a YAML file, without ``#``; empty when it has none."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def _leaves(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict) and tree:
        return [
            leaf
            for key, value in tree.items()
            for leaf in _leaves(value, f"{prefix}.{key}" if prefix else str(key))
        ]
    return [prefix] if prefix else []


def _render(tree: dict[str, Any], prefix: str, depth: int, found: dict[str, str], out: list[str]):
    indent = "  " * depth
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.append(f"{indent}{key}:")
            _render(value, path, depth + 1, found, out)
            continue
        if isinstance(value, tuple):
            value = list(value)
        flat_list = isinstance(value, list) and not any(isinstance(v, dict | list) for v in value)
        style = None if flat_list else False  # [a, b] for lists of scalars, else block style
        text = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=style).rstrip()
        first, *rest = text.splitlines()
        source = found.get(path)
        out.append(f"{indent}{first}" + (f"  # from {source}" if source else ""))
        out.extend(f"{indent}{line}" for line in rest)
