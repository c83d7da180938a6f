"""The ``sophon`` command line.

Each sub-command lives beside the code it drives: a module listed in ``_COMMAND_MODULES``
exposes ``register_cli(subparsers)``, which adds its sub-parser and sets ``handler`` to a
function taking the parsed arguments and returning an exit code. Modules are imported only
when the command line is built, so ``import sophon`` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_COMMAND_MODULES = (
    "sophon.generate",
    "sophon.scoring",
    "sophon.training",
    "sophon.embedding",
    "sophon.synthetic",
    "sophon.packaging",
    "sophon.delphes",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sophon", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # a module not written yet; its command is absent
                continue
            raise
        module.register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        # The project's own errors name the file, column or value; show them without a traceback.
        print(f"sophon {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
