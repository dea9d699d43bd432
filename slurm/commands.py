"""`blockmix submit`: train a config as a SLURM job (or locally) through submitit."""

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
    submit.set_defaults(handler=_submit)


def _submit(args: argparse.Namespace) -> int:
    from slurm.cluster import load_cluster_config
    from slurm.submit import Resources, submit, wait
    from slurm.tasks import TrainTask
    from train.config import load_config

    cluster = load_cluster_config().with_overrides(
        executor=args.executor,
        partition=args.partition,
        time_min=args.time_min,
        account=args.account,
        qos=args.qos,
        constraint=args.constraint,
    )
    config = load_config(args.config, args.overrides)  # a bad key fails here, not in the job
    run_dir = cluster.resolve(config.run.dir)
    config_arg = str(Path(args.config).resolve()) if Path(args.config).is_file() else args.config
    task = TrainTask(config_arg, args.overrides, run_dir)
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"blockmix-{run_dir.name}")
    job = submit(task, cluster, Resources(args.nodes, args.gpus_per_node), name)
    print(
        f"submitted job {job.job_id} ({cluster.executor}): run {run_dir}, logs {job.paths.folder}"
    )
    if not args.wait:
        return 0
    try:
        succeeded = wait([job])
    except KeyboardInterrupt:
        print(f"stopped waiting; job {job.job_id} keeps running (scancel it to stop it)")
        return 130
    if not succeeded:
        return 1
    print(json.dumps(job.results()[0]))
    return 0
