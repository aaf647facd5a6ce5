"""The `minimoe` command. Each subcommand lives beside the code it drives and registers here.

Every subcommand module exposes `add_parser(subparsers)`, which adds its parser and sets
`func` to the function that runs it (taking the parsed args, returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (module, attribute) of each subcommand's `add_parser`, in the order `minimoe --help` lists them.
SUBCOMMANDS = [
    "minimoe.commands.train",
    "minimoe.commands.upcycle",
    "minimoe.commands.generate",
    "minimoe.commands.eval",
    "minimoe.commands.info",
    "minimoe.commands.quantize",
    "minimoe.commands.export",
    "minimoe.commands.inspect",
    "minimoe.commands.estimate",
    "minimoe.commands.bench",
    "minimoe.commands.data",
    "minimoe.commands.grade",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minimoe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in SUBCOMMANDS:
        importlib.import_module(mod).add_parser(sub)
    return parser


def main(argv=None) -> int:
    from minimoe.errors import MinimoeError
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MinimoeError as e:
        print(f"minimoe {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"minimoe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
