"""Which comparison row a training run belongs to, from its resolved config.

The run directory itself (file names, results, progress, scalars) is read through
`train.rundir.RunDir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunLabel:
    """Which row of a comparison a run belongs to.

    ``mode`` of a template variant is its matching mode; of a baseline it is ``compact`` when the
    baseline was narrowed for the compact pairing (``model.options.width_multiplier`` < 1), else
    None (the registered baseline, which the ``deeper`` variant is matched to).
    """

    model: str
    variant: str
    mode: str | None
    point: tuple[str, ...] = ()  # the sweep's grid point (``key=value``s) of this row

    @property
    def text(self) -> str:
        if self.variant == "baseline":
            text = "baseline" if self.mode is None else f"baseline ({self.mode}-matched)"
        else:
            text = f"tmix {self.mode}" if self.mode else "tmix"
        return f"{text} [{', '.join(short_point(self.point))}]" if self.point else text


def short_point(point: tuple[str, ...] | list[str]) -> list[str]:
    """A grid point's ``key=value``s with each key shortened to its last dotted part, unless two
    keys of the point share it (``model.mixing.init=identity`` -> ``init=identity``)."""
    keys = [item.partition("=")[0] for item in point]
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return [
        f"{short if last.count(short) == 1 else key}={item.partition('=')[2]}"
        for key, short, item in zip(keys, last, point, strict=True)
    ]


def label_of(config: dict[str, Any]) -> RunLabel:
    """The comparison row of a run, from its resolved config."""
    model = config["model"]
    mode = model.get("mode")
    if model["variant"] == "baseline":
        narrowed = float((model.get("options") or {}).get("width_multiplier", 1.0)) < 1.0
        mode = "compact" if narrowed else None
    return RunLabel(model["name"], model["variant"], mode)
