"""The ``sophon`` command line.

Each sub-command lives beside the code it drives: a module listed in ``_COMMAND_MODULES``
exposes ``register_cli(subparsers)``, which adds its sub-parser and sets ``handler`` to a
function taking the parsed arguments and returning an exit code. Modules are imported only
when the command line is built, so ``import sophon`` stays light. A command whose optional extra
is not installed (``sophon generate`` without Pythia) is still listed; running it says what to
install (:class:`sophon.extras.MissingExtraError`).

``sophon serve`` starts the app (``app/serve.py``, the script ``make app`` runs) from wherever the
package is installed; its options are the script's (``sophon serve --help``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from sophon import __version__
from sophon.extras import DISTRIBUTION, MissingExtraError

_COMMAND_MODULES = (
    "sophon.generate",
    "sophon.scoring",
    "sophon.training",
    "sophon.head_training",
    "sophon.embedding",
    "sophon.synthetic",
    "sophon.packaging",
    "sophon.delphes",
    "sophon.manifest",
    "sophon.transfer",
    "sophon.anomaly",
)
#: the app's server script, reached by name when ``sophon serve`` runs (the library itself
#: imports nothing from the app)
SERVE_MODULE = "app.serve"


def report_json(summary: dict, output: str | os.PathLike | None = None) -> int:
    """How a command reports its JSON summary: printed, and written to ``output`` (atomically,
    the same text) when one is given. Returns the exit code 0."""
    from sophon.atomic import atomic_output

    text = json.dumps(summary, indent=1)
    if output is not None:
        with atomic_output(output) as temporary:
            temporary.write_text(text + "\n")
    print(text)
    return 0


def _register_missing(subparsers, command: str, error: MissingExtraError) -> None:
    """A stand-in for a command whose extra is missing: listed in the help, and running it
    prints what to install (exit status 2)."""
    parser = subparsers.add_parser(command, help=f"(not installed) {error}", add_help=False)

    def refuse(args: argparse.Namespace, ignored: list[str]) -> int:
        print(f"sophon {command}: error: {error}", file=sys.stderr)
        return 2

    parser.set_defaults(handler=refuse, passes_arguments_on=True)


def _serve(args: argparse.Namespace, passed_on: list[str]) -> int:
    serve = importlib.import_module(SERVE_MODULE)
    return serve.main(passed_on, prog="sophon serve")


VERSION = f"sophon ({DISTRIBUTION}) {__version__}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sophon", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=VERSION)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except MissingExtraError as error:
            _register_missing(subparsers, module_name.rpartition(".")[2], error)
            continue
        except ModuleNotFoundError as error:
            if error.name == module_name:  # a module not written yet; its command is absent
                continue
            raise
        module.register_cli(subparsers)
    serve = subparsers.add_parser(
        "serve", add_help=False,
        help="serve the app on the embedded default dataset (or --data PATH), on this machine "
             "only unless --host says otherwise; options: sophon serve --help")
    serve.set_defaults(handler=_serve, passes_arguments_on=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:  # answered before the commands' modules (and torch) are imported
        print(VERSION)
        return 0
    parser = build_parser()
    args, passed_on = parser.parse_known_args(argv)
    if not getattr(args, "passes_arguments_on", False) and passed_on:
        parser.error(f"unrecognized arguments: {' '.join(passed_on)}")
    try:
        if getattr(args, "passes_arguments_on", False):
            return int(args.handler(args, passed_on) or 0)
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, MissingExtraError) as error:
        # The project's own errors name the file, column or value; show them without a traceback.
        print(f"sophon {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
