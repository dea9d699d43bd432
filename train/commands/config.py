"""`blockmix config show` (the resolved config and where each value came from) and
`blockmix config list` (the named configs)."""

from __future__ import annotations

import argparse

from train.commands.run import OVERRIDES_HELP


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `config show` and `config list`."""
    config = subparsers.add_parser("config", help="show a resolved config; list named configs")
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="the resolved config as YAML; values set by a file or override say where from",
    )
    show.add_argument("config", help="a named config (`blockmix config list`) or a YAML file")
    show.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    show.set_defaults(handler=_show)
    listing = actions.add_parser(
        "list", help="named configs and their first comment line (train/configs, "
        "then the folders of $BLOCKMIX_CONFIG_PATH)"
    )  # fmt: skip
    listing.set_defaults(handler=_list)


def _show(args: argparse.Namespace) -> int:
    from train.provenance import show

    print(show(args.config, args.overrides))
    return 0


def _list(args: argparse.Namespace) -> int:
    from train.config import CONFIG_DIR, named_configs
    from train.provenance import first_comment

    named = named_configs()
    width = max(len(name) for name in named) + 2
    for name, path in named.items():
        where = "" if path.parent == CONFIG_DIR else f" [{path.parent}]"
        print(f"{name:<{width}}{first_comment(path)}{where}")
    return 0
