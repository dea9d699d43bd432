"""The `blockmix` command line: one parser whose subcommands come from each package.

Each module in ``COMMAND_MODULES`` exposes ``add_commands(subparsers)`` and sets a ``handler``
default on the parsers it adds; a handler takes the parsed namespace and returns an exit code.
Handlers import heavy dependencies lazily so that ``blockmix --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence

from train.errors import BlockmixError
from train.textlog import configure_logging, version
from train.untrusted import user_error_line

COMMAND_MODULES: tuple[str, ...] = (
    "train.commands.models",
    "train.commands.config",
    "train.commands.run",
    "data_pipeline.commands",
    "slurm.commands",
)


def build_parser() -> argparse.ArgumentParser:
    """The full `blockmix` parser with every package's subcommands."""
    parser = argparse.ArgumentParser(
        prog="blockmix",
        description="Train template-mixture networks against parameter-matched baselines.",
    )
    parser.add_argument("--version", action="version", version=f"blockmix {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `blockmix` command; user errors become one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except BlockmixError as error:
        print(f"blockmix {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`blockmix models | head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as error:  # a missing, misplaced or full path is the user's; others are bugs
        if (line := user_error_line(error)) is None:
            raise
        print(f"blockmix {args.command}: error: {line}", file=sys.stderr)
        return 2
