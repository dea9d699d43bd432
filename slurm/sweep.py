"""Paired sweeps: every baseline x seed next to its parameter-matched template variants.

A sweep file holds only what differs from a named training config::

    config: demo                  # named config (train/configs) or a YAML file
    models: [isometric]           # registered models (default: the config's model.name)
    modes: [deeper, compact]      # matched template variants to train next to each baseline
                                  # ([]: no pairing, the config's own variant over grid x seeds)
    seeds: [0, 1, 2]              # run.seed of every run
    overrides: {data.root: data/demo, train.epochs: 6}   # dotted keys, for every run
    grid: {model.mixing.init: [uniform, identity], optim.logits_lr_scale: [1, 10]}
    resources: {nodes: 1, gpus_per_node: 0}
    cluster: {executor: local}    # slurm.cluster.ClusterConfig fields for this sweep
    dir: runs/sweeps/demo         # default runs/sweeps/<file name>; relative: under run_root

``grid`` maps dotted config keys to lists of values; their cross product (a grid point each) is
crossed with models x modes x seeds. Baselines and variants are paired per seed and per grid
point; keys that only concern template variants (`TMIX_ONLY_KEYS`, e.g. ``model.mixing.*``) do
not multiply the baselines. ``modes: []`` plans unpaired runs: the config as it is (its own
``model.variant`` and ``model.mode``) at every grid point and seed, e.g. transfer or adaptation
runs compared among themselves. For each model and seed, the runs of that pair (baseline, ``tmix``
per mode and grid point and, for ``compact``, the narrowed baseline it is matched to) are one job
array. Sweep directory::

    SWEEP_DIR/sweep.yaml      the sweep file as last submitted
    SWEEP_DIR/plan.json       every planned run: name, model, variant, mode, seed, overrides
    SWEEP_DIR/jobs.json       run name -> the job that last ran it (executor, job id, log folder)
    SWEEP_DIR/runs/NAME/      each run's directory (config.yaml, checkpoints/, tb/, results.json)
    SWEEP_DIR/submitit/       job pickles and logs
    SWEEP_DIR/compare.{md,csv,png}   written by `blockmix compare SWEEP_DIR`

A run is finished when its ``results.json`` exists; pending or running while its recorded job
is (``squeue`` on SLURM, the process on the local executor); failed when that job has ended
without results; missing when it was never submitted. Submitting again sends only missing and
failed runs; a failed run resumes from its latest checkpoint.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from slurm.cluster import ClusterConfig, load_cluster_config, validate
from slurm.runs import short_point
from slurm.submit import Resources
from train.errors import BlockmixError
from train.rundir import RunDir
from train.untrusted import read_json, reading

PLAN_FILE = "plan.json"
JOBS_FILE = "jobs.json"
STATES = ("missing", "pending", "running", "finished", "failed")
# Keys the sweep sets on every run itself.
OWNED_KEYS = ("run.dir", "run.seed", "model.name", "model.variant", "model.mode")
# Grid keys (exact, or a prefix ending in ".") that change only template variants.
TMIX_ONLY_KEYS = ("model.mixing.", "model.templates", "optim.logits_lr_scale")
_SLURM_STATES = {"PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending"}


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file; see the module docstring."""

    path: Path
    config: str
    models: tuple[str, ...]
    modes: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()
    grid: tuple[tuple[str, tuple[str, ...]], ...] = ()
    resources: Resources = field(default_factory=Resources)
    cluster: dict[str, Any] = field(default_factory=dict)
    dir: str = ""

    @property
    def name(self) -> str:
        return Path(self.dir).name

    def points(self) -> list[tuple[str, ...]]:
        """Every grid point as ``key=value`` overrides (one empty point without a grid)."""
        keys = [key for key, _ in self.grid]
        return [
            tuple(f"{key}={value}" for key, value in zip(keys, values, strict=True))
            for values in itertools.product(*(values for _, values in self.grid))
        ]


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a sweep; ``mode`` as in `slurm.runs.RunLabel`; ``point``: its grid
    point as ``key=value`` overrides (for a baseline, only the keys that concern it)."""

    name: str
    model: str
    variant: str
    mode: str | None
    seed: int
    overrides: tuple[str, ...]
    params: int
    point: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pairing:
    """Parameter counts of one model's matched pair, as `blockmix params` reports them."""

    model: str
    mode: str
    baseline_params: int
    tmix_params: int

    @property
    def rel_diff(self) -> float:
        return (self.tmix_params - self.baseline_params) / self.baseline_params


@dataclass(frozen=True)
class Plan:
    spec: SweepSpec
    cluster: ClusterConfig
    sweep_dir: Path
    pairings: tuple[Pairing, ...]
    runs: tuple[PlannedRun, ...]

    def groups(self) -> dict[tuple[str, int], list[PlannedRun]]:
        """The runs of each (model, seed): one job array."""
        grouped: dict[tuple[str, int], list[PlannedRun]] = {}
        for run in self.runs:
            grouped.setdefault((run.model, run.seed), []).append(run)
        return grouped


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file; every problem is a one-line error naming the field."""
    file = Path(path)
    where = f"sweep file {file}"
    if not file.is_file():
        raise BlockmixError(f"{where} does not exist")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        raise BlockmixError(f"{where}: not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BlockmixError(f"{where}: the top level must be a mapping of fields")
    known = (
        "config", "models", "modes", "seeds", "overrides", "grid", "resources", "cluster", "dir",
    )  # fmt: skip
    unknown = sorted(map(str, set(data) - set(known)))
    if unknown:
        raise BlockmixError(f"{where}: unknown field(s) {', '.join(unknown)}; fields: {known}")
    config = data.get("config")
    if not isinstance(config, str) or not config:
        raise BlockmixError(f"{where}: config must name a training config (e.g. `config: demo`)")
    if Path(config).suffix in (".yaml", ".yml") and not Path(config).is_absolute():
        config = str((file.parent / config).resolve())
    return SweepSpec(
        path=file,
        config=config,
        models=_names(data, "models", where, required=False),
        modes=_modes(data, where),
        seeds=_seeds(data, where),
        overrides=_overrides(data.get("overrides") or {}, where),
        grid=_grid(data.get("grid") or {}, where),
        resources=_resources(data.get("resources") or {}, where),
        cluster=_cluster(data.get("cluster") or {}, where),
        dir=str(data.get("dir") or f"runs/sweeps/{file.stem}"),
    )


def make_plan(spec: SweepSpec, executor: str | None = None, overrides: Sequence[str] = ()) -> Plan:
    """Every run of the sweep with its parameter count; each run's config is checked here.
    ``overrides`` (dotted ``key=value``) apply to every run, after the sweep file's."""
    from train.config import load_config
    from train.models import match, model_config
    from train.models.matching import config_params

    for item in overrides:
        if item.partition("=")[0] in OWNED_KEYS:
            raise BlockmixError(f"override {item!r}: the sweep sets this key on every run itself")
    spec = replace(spec, overrides=(*spec.overrides, *overrides))
    chosen = {"executor": executor} if executor else {}
    cluster = load_cluster_config().with_overrides(**{**spec.cluster, **chosen})
    sweep_dir = cluster.resolve(spec.dir)
    pairings, runs = [], []
    seen: set[str] = set()
    for point in spec.points():
        base = load_config(spec.config, [*spec.overrides, *point])
        shared = baseline_point(point)
        for model in spec.models or (base.model.name,):
            mc = base.model
            registered = model_config(
                model, num_classes=mc.num_classes, num_tasks=mc.num_tasks, **mc.build_kwargs()
            )
            if spec.modes:
                variants: list[tuple[str, str | None, tuple[str, ...], int, tuple[str, ...]]] = [
                    ("baseline", None, (), config_params(registered), shared)
                ]
            else:  # unpaired: the config's own variant at every grid point
                own = model_config(
                    model, mc.variant, mc.num_classes, mc.mode, mc.num_tasks, **mc.build_kwargs()
                )
                mode = (f"model.mode={mc.mode}",) if mc.mode else ()
                variants = [(mc.variant, mc.mode, mode, config_params(own), point)]
            for mode in spec.modes:
                pair = match(registered, mode)
                pairing = Pairing(model, mode, pair.baseline_params, pair.tmix_params)
                if pairing not in pairings:
                    pairings.append(pairing)
                if pair.baseline.width_multiplier != registered.width_multiplier:
                    narrowed = (
                        f"model.options.width_multiplier={pair.baseline.width_multiplier}",
                        f"model.options.channel_divisor={pair.baseline.channel_divisor}",
                    )
                    variants.append(("baseline", mode, narrowed, pair.baseline_params, shared))
                tmix = (f"model.mode={mode}",)
                variants.append(("tmix", mode, tmix, pair.tmix_params, point))
            for seed in spec.seeds:
                for variant, mode, extra, params, run_point in variants:
                    name = run_name(model, variant, mode, run_point, seed)
                    if name in seen:  # a baseline shared by grid points of tmix-only keys
                        continue
                    seen.add(name)
                    run_overrides = (
                        *spec.overrides,
                        *run_point,
                        f"model.name={model}",
                        f"model.variant={variant}",
                        *extra,
                        f"run.seed={seed}",
                    )
                    run_dir = f"run.dir={sweep_dir / 'runs' / name}"
                    load_config(spec.config, [*run_overrides, run_dir])
                    runs.append(
                        PlannedRun(
                            name, model, variant, mode, seed, run_overrides, params, run_point
                        )
                    )
    return Plan(spec, cluster, sweep_dir, tuple(pairings), tuple(runs))


def run_name(model: str, variant: str, mode: str | None, point: Sequence[str], seed: int) -> str:
    """``<model>-<variant>[-<mode>][-<key>=<value>...]-s<seed>`` (keys as `short_point`)."""
    parts = [_slug(item) for item in short_point(point)]
    return "-".join(part for part in (model, variant, mode, *parts) if part) + f"-s{seed}"


def _slug(item: str) -> str:
    """``key=value`` with anything but letters, digits and ``._+-`` in the value replaced."""
    key, _, value = item.partition("=")
    return f"{key}={re.sub(r'[^A-Za-z0-9._+-]+', '_', value).strip('_') or '_'}"


def baseline_point(point: Sequence[str]) -> tuple[str, ...]:
    """The part of a grid point that concerns baselines (all but `TMIX_ONLY_KEYS`)."""
    return tuple(item for item in point if not _tmix_only(item))


def _tmix_only(item: str) -> bool:
    key = item.partition("=")[0]
    return any(key.startswith(k) if k.endswith(".") else key == k for k in TMIX_ONLY_KEYS)


def read_plan(sweep_dir: Path) -> list[PlannedRun]:
    """The runs recorded in ``SWEEP_DIR/plan.json``."""
    path = sweep_dir / PLAN_FILE
    if not path.is_file():
        raise BlockmixError(
            f"{sweep_dir} is not a sweep directory (no {PLAN_FILE}); run blockmix sweep"
        )
    with reading(path, "run blockmix sweep again to rewrite it"):
        return [
            PlannedRun(
                **{
                    **run,
                    "overrides": tuple(run["overrides"]),
                    "point": tuple(run.get("point", ())),
                }
            )
            for run in json.loads(path.read_text())["runs"]
        ]


def read_jobs(sweep_dir: Path) -> dict[str, dict[str, str]]:
    """run name -> {executor, job_id, folder, submitted} of the job that last ran it."""
    path = sweep_dir / JOBS_FILE
    return read_json(path) if path.is_file() else {}


def run_state(run_dir: Path, job: dict[str, str] | None) -> str:
    """One of `STATES` for a run directory and its recorded job (see the module docstring)."""
    if RunDir(run_dir).finished:
        return "finished"
    if job is None:
        return "missing"
    return job_state(job["executor"], job["job_id"]) or "failed"


def job_state(executor: str, job_id: str) -> str | None:
    """``pending`` or ``running`` while a job is alive, None once it has ended."""
    if executor == "slurm":
        query = ["squeue", "-h", "-j", job_id, "-o", "%T"]
        try:
            out = subprocess.run(query, capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired) as error:
            raise BlockmixError(f"cannot ask SLURM about job {job_id}: {error}") from None
        state = out.strip().splitlines()[0] if out.strip() else ""
        return _SLURM_STATES.get(state, "running") if state else None
    if executor == "local":
        return "running" if _process_alive(int(job_id)) else None
    return None  # debug jobs run inside the process that submitted them


def states(plan_runs: Sequence[PlannedRun], sweep_dir: Path) -> dict[str, str]:
    """run name -> state."""
    jobs = read_jobs(sweep_dir)
    return {
        run.name: run_state(sweep_dir / "runs" / run.name, jobs.get(run.name)) for run in plan_runs
    }


def submit_plan(plan: Plan, only: Collection[str] | None = None) -> list[Any]:
    """Submit every missing or failed run (of ``only``, run names, if given), one job array per
    (model, seed); record the jobs. ``plan.json`` always lists every run of the plan."""
    from slurm.submit import submit_array
    from slurm.tasks import TrainTask
    from train.runlock import acquire

    lock = acquire(plan.sweep_dir, "sweep directory")  # one `blockmix sweep` at a time
    current = states(plan.runs, plan.sweep_dir)
    cluster = plan.cluster.with_overrides(log_root=str(plan.sweep_dir / "submitit"))
    _write_json(plan.sweep_dir / PLAN_FILE, {"runs": [run.__dict__ for run in plan.runs]})
    (plan.sweep_dir / "sweep.yaml").write_text(plan.spec.path.read_text())
    jobs_record, submitted = read_jobs(plan.sweep_dir), []
    for (model, seed), runs in plan.groups().items():
        todo = [
            run
            for run in runs
            if current[run.name] in ("missing", "failed") and (only is None or run.name in only)
        ]
        if not todo:
            continue
        tasks = [
            TrainTask(plan.spec.config, run.overrides, plan.sweep_dir / "runs" / run.name)
            for run in todo
        ]
        name = f"blockmix-{plan.spec.name}-{model}-s{seed}"
        jobs = submit_array(tasks, cluster, plan.spec.resources, name)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for run, job in zip(todo, jobs, strict=True):
            jobs_record[run.name] = {
                "executor": cluster.executor,
                "job_id": str(job.job_id),
                "folder": str(job.paths.folder),
                "submitted": now,
            }
        _write_json(plan.sweep_dir / JOBS_FILE, jobs_record)
        submitted += jobs
    lock.release()
    return submitted


def describe_plan(plan: Plan, current: dict[str, str]) -> str:
    """The plan as text: resources, parameter counts per mode, every run and what happens to it."""
    spec, cluster = plan.spec, plan.cluster
    res = spec.resources
    lines = [
        f"sweep {spec.name}: {plan.sweep_dir}",
        f"config {spec.config}; overrides: {' '.join(spec.overrides) or '-'}",
        "grid: "
        + ("; ".join(f"{key} in [{', '.join(values)}]" for key, values in spec.grid) or "-")
        + f" ({len(spec.points())} point(s))",
        f"resources per run: {res.nodes} node(s) x {res.tasks_per_node} task(s), "
        f"{res.gpus_per_node} GPU(s)/node, {cluster.cpus_per_task} CPU(s)/task, "
        f"{cluster.time_min} min; executor {cluster.executor}"
        + (f", partition {cluster.partition}" if cluster.partition else ""),
        "",
        f"{'model':<16}{'mode':<10}{'baseline params':>16}{'tmix params':>14}{'rel diff':>10}",
    ]
    lines += [
        f"{p.model:<16}{p.mode:<10}{p.baseline_params:>16,}{p.tmix_params:>14,}{p.rel_diff:>+10.2%}"
        for p in plan.pairings
    ]
    width = max([34, *(len(run.name) + 2 for run in plan.runs)])
    lines += ["", f"{'run':<{width}}{'seed':>5}{'params':>12}  {'state':<9}action"]
    for run in plan.runs:
        state = current[run.name]
        action = "submit" if state in ("missing", "failed") else "-"
        lines.append(f"{run.name:<{width}}{run.seed:>5}{run.params:>12,}  {state:<9}{action}")
    todo = sum(state in ("missing", "failed") for state in current.values())
    arrays = sum(
        any(current[run.name] in ("missing", "failed") for run in runs)
        for runs in plan.groups().values()
    )
    lines.append(f"\n{todo} of {len(plan.runs)} runs to submit in {arrays} job array(s)")
    return "\n".join(lines)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` to a temporary file and rename it, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _names(data: dict, key: str, where: str, required: bool) -> tuple[str, ...]:
    value = data.get(key)
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise BlockmixError(f"{where}: {key} must be a non-empty list of names")
    if len(set(value)) != len(value):
        raise BlockmixError(f"{where}: {key} lists a name twice")
    if key == "models":
        from train.models import list_models

        unknown = [name for name in value if name not in list_models()]
        if unknown:
            raise BlockmixError(
                f"{where}: models: unknown model {unknown[0]!r}; see `blockmix models`"
            )
    return tuple(value)


def _modes(data: dict, where: str) -> tuple[str, ...]:
    from train.models import MODES

    if data.get("modes") == []:
        return ()  # unpaired runs of the config's own variant
    modes = _names(data, "modes", where, required=True)
    bad = [mode for mode in modes if mode not in MODES]
    if bad:
        raise BlockmixError(f"{where}: modes: {bad[0]!r} is not one of {', '.join(MODES)}")
    return modes


def _seeds(data: dict, where: str) -> tuple[int, ...]:
    seeds = data.get("seeds")
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise BlockmixError(f"{where}: seeds must be a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise BlockmixError(f"{where}: seeds lists a seed twice")
    return tuple(seeds)


def _overrides(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, dict):
        raise BlockmixError(f"{where}: overrides must be a mapping of dotted keys to values")
    items = []
    for key, item in value.items():
        if key in OWNED_KEYS:
            raise BlockmixError(
                f"{where}: overrides: {key} is set by the sweep itself "
                f"(use models, modes, seeds, dir)"
            )
        text = item if isinstance(item, str) else json.dumps(item)
        items.append(f"{key}={text}")
    return tuple(items)


def _grid(value: Any, where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``grid``: dotted key -> non-empty list of distinct values, as override texts."""
    if not isinstance(value, dict):
        raise BlockmixError(f"{where}: grid must be a mapping of dotted keys to lists of values")
    grid = []
    for key, values in value.items():
        if key in OWNED_KEYS:
            raise BlockmixError(
                f"{where}: grid: {key} is set by the sweep itself (use models, modes, seeds)"
            )
        if not isinstance(values, list) or not values:
            raise BlockmixError(f"{where}: grid.{key} must be a non-empty list of values")
        texts = tuple(v if isinstance(v, str) else json.dumps(v) for v in values)
        if len(set(texts)) != len(texts):
            raise BlockmixError(f"{where}: grid.{key} lists a value twice")
        grid.append((str(key), texts))
    return tuple(grid)


def _resources(value: Any, where: str) -> Resources:
    names = [item.name for item in fields(Resources)]
    if not isinstance(value, dict) or set(value) - set(names):
        raise BlockmixError(f"{where}: resources must be a mapping with fields {', '.join(names)}")
    for key, item in value.items():
        low = 1 if key == "nodes" else 0
        if not isinstance(item, int) or isinstance(item, bool) or item < low:
            raise BlockmixError(f"{where}: resources.{key} must be an integer >= {low}")
    return Resources(**value)


def _cluster(value: Any, where: str) -> dict[str, Any]:
    names = [item.name for item in fields(ClusterConfig)]
    if not isinstance(value, dict):
        raise BlockmixError(f"{where}: cluster must be a mapping of cluster config fields")
    unknown = sorted(map(str, set(value) - set(names)))
    if unknown:
        raise BlockmixError(
            f"{where}: cluster: unknown field(s) {', '.join(unknown)}; fields: {', '.join(names)}"
        )
    for key, item in value.items():
        expected = type(getattr(ClusterConfig(), key))
        if not isinstance(item, expected) or isinstance(item, bool):
            raise BlockmixError(f"{where}: cluster.{key} must be a {expected.__name__}")
    validate(replace(ClusterConfig(), **value), where=f"{where}: cluster")
    return dict(value)
