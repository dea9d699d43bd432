"""`blockmix submit` (one training job), `sweep` (paired baseline/variant runs over seeds),
`status` (a sweep's runs) and `compare` (the report), through submitit."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from slurm.cluster import EXECUTORS


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    submit = subparsers.add_parser(
        "submit",
        help="train a config as a SLURM job (requeued on preemption and time limits)",
        description="Site defaults (partition, account, paths) come from the cluster config: "
        "~/.config/blockmix/cluster.yaml or $BLOCKMIX_CLUSTER_CONFIG (see README: SLURM).",
    )
    submit.add_argument("config", help="a named config (train/configs) or a YAML file")
    submit.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    submit.add_argument("--nodes", type=int, default=1)
    submit.add_argument(
        "--gpus-per-node", type=int, default=0, help="one task per GPU; 0: one task per node"
    )
    submit.add_argument("--partition")
    submit.add_argument("--time", type=int, dest="time_min", metavar="MIN")
    submit.add_argument("--account")
    submit.add_argument("--qos")
    submit.add_argument("--constraint")
    submit.add_argument("--cluster", choices=EXECUTORS, dest="executor")
    submit.add_argument("--wait", action="store_true", help="block until the job ends")
    submit.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config and model, print parameters, FLOPs, the DeepSpeed config and "
        "the SLURM resources; submit nothing",
    )
    submit.set_defaults(handler=_submit)

    sweep = subparsers.add_parser(
        "sweep",
        help="train baselines and their matched template variants over seeds (one array each)",
        description="Submits only runs that are missing or failed; see README: Sweeps.",
    )
    sweep.add_argument("sweep", metavar="SWEEP.yaml", help="a sweep file (slurm/sweeps/*.yaml)")
    sweep.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides for every run"
    )
    sweep.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    sweep.add_argument("--cluster", choices=EXECUTORS, dest="executor")
    sweep.add_argument(
        "--wait", action="store_true", help="block until the submitted jobs end (debug: always)"
    )
    sweep.set_defaults(handler=_sweep)

    status = subparsers.add_parser("status", help="state, step and latest metric of a sweep's runs")
    status.add_argument("sweep_dir", metavar="SWEEP_DIR")
    status.set_defaults(handler=_status)

    compare = subparsers.add_parser(
        "compare", help="baseline vs template variants: Markdown table, CSV and PNG"
    )
    compare.add_argument("paths", nargs="+", metavar="SWEEP_DIR | RUN_DIR")
    compare.add_argument(
        "--out", type=Path, help="path prefix of .md/.csv/.png (default SWEEP_DIR/compare)"
    )
    compare.set_defaults(handler=_compare)


def _submit(args: argparse.Namespace) -> int:
    from slurm.cluster import load_cluster_config
    from slurm.submit import Resources, job_parameters, submit, wait
    from slurm.tasks import TrainTask
    from train.config import load_config
    from train.preflight import describe, preflight

    cluster = load_cluster_config().with_overrides(
        executor=args.executor,
        partition=args.partition,
        time_min=args.time_min,
        account=args.account,
        qos=args.qos,
        constraint=args.constraint,
    )
    config = load_config(args.config, args.overrides)  # a bad key fails here, not in the job
    resources = Resources(args.nodes, args.gpus_per_node)
    # the model and DeepSpeed config too: a mistake must not wait in the queue first
    report = preflight(config, args.nodes * resources.tasks_per_node, args.gpus_per_node > 0)
    run_dir = cluster.resolve(config.run.dir)
    config_arg = str(Path(args.config).resolve()) if Path(args.config).is_file() else args.config
    task = TrainTask(config_arg, args.overrides, run_dir)
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"blockmix-{run_dir.name}")
    if args.dry_run:
        parameters = job_parameters(cluster, resources, name, task.stop_signal)
        print(describe(report))
        print(f"run        {run_dir}")
        text = json.dumps(parameters, indent=2, sort_keys=True).replace("\n", "\n" + " " * 11)
        print(f"{cluster.executor:<11}{text}")
        print("dry run: nothing submitted")
        return 0
    job = submit(task, cluster, resources, name)
    print(
        f"submitted job {job.job_id} ({cluster.executor}): run {run_dir}, logs {job.paths.folder}"
    )
    if not (args.wait or cluster.executor == "debug"):
        return 0  # debug jobs run in this process, while waited for
    try:
        succeeded = wait([job])
    except KeyboardInterrupt:
        print(f"stopped waiting; job {job.job_id} keeps running (scancel it to stop it)")
        return 130
    if not succeeded:
        return 1
    print(json.dumps(job.results()[0]))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from slurm.submit import wait
    from slurm.sweep import describe_plan, load_sweep, make_plan, states, submit_plan

    plan = make_plan(load_sweep(args.sweep), args.executor, args.overrides)
    print(describe_plan(plan, states(plan.runs, plan.sweep_dir)))
    if args.dry_run:
        print("dry run: nothing submitted")
        return 0
    jobs = submit_plan(plan)
    print(f"submitted {len(jobs)} run(s); `blockmix status {plan.sweep_dir}` shows them")
    if not (args.wait or plan.cluster.executor == "debug") or not jobs:
        return 0  # debug jobs run in this process, while waited for
    try:
        return 0 if wait(jobs) else 1
    except KeyboardInterrupt:
        print("stopped waiting; the jobs keep running")
        return 130


def _status(args: argparse.Namespace) -> int:
    from slurm.endstate import end_state
    from slurm.sweep import read_jobs, read_plan, states
    from train.rundir import RunDir

    sweep_dir = Path(args.sweep_dir)
    planned = read_plan(sweep_dir)
    current, jobs = states(planned, sweep_dir), read_jobs(sweep_dir)
    print(f"{'run':<34}{'state':<26}{'step':>8}  latest metric (multi-task: mean of tasks)")
    for run in planned:
        step, metric = RunDir(sweep_dir / "runs" / run.name).progress()
        shown = "-" if step is None else str(step)
        state = current[run.name]
        if state == "failed":  # its job ended without results: say how
            state += f": {end_state(jobs[run.name]) or 'unknown'}"
        print(f"{run.name:<34}{state:<26}{shown:>8}  {metric or '-'}")
    counts = {state: list(current.values()).count(state) for state in sorted(set(current.values()))}
    print(", ".join(f"{count} {state}" for state, count in counts.items()))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from slurm.compare import report
    from slurm.sweep import PLAN_FILE

    sweep = len(args.paths) == 1 and (Path(args.paths[0]) / PLAN_FILE).is_file()
    out = args.out or (Path(args.paths[0]) / "compare" if sweep else Path("compare"))
    print(report(args.paths, out))
    print(f"\nwritten: {out}.md, {out}.csv, {out}.png")
    return 0
