"""`pasu`: one command-line entry point, a thin layer over the Python API.

Each component owns its subcommands in a small module exposing
``register(subparsers)``; this file only lists those modules. A module that is
not there yet (a component still to land) is skipped, but one that is there and
fails to import is an error, never silently hidden.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pasu import __version__

# Subcommand modules, in the order their commands appear in `pasu --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "pasu.tools.commands.demo",  # pasu demo
    "pasu.tools.commands.decode",  # pasu decode
    "pasu.tools.commands.model",  # pasu model tiny
    "pasu.tools.commands.bench",  # pasu bench decoder|latency|cloud|soak
    "pasu.tools.data.cli",  # pasu data synth
    "pasu.tools.train.cli",  # pasu train, pasu eval
    "pasu.tools.convert.cli",  # pasu convert
    "pasu.cloud.cli",  # pasu cloud serve
    "pasu.device.cli",  # pasu device transcribe|run|train-confidence
    "pasu.tools.experiment.cli",  # pasu experiment offload
    "pasu.tools.export.cli",  # pasu export
)


def flag_values(args: argparse.Namespace, names: str, prefix: str = "") -> dict[str, Any]:
    """``{name: args.<prefix><name>}`` for each of the space-separated ``names``: the options
    whose flag is named after the field it sets, so a CLI maps them without a line each."""
    return {name: getattr(args, prefix + name) for name in names.split()}


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is not there either
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pasu",
        description="Hybrid edge-cloud speech understanding with pilot inference.",
    )
    parser.add_argument("--version", action="version", version=f"pasu {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        if _present(name):
            importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # ESPnet and numba are chatty at INFO; keep them at WARNING unless -vv.
    if args.verbose < 2:
        for noisy in ("espnet2", "numba", "espnet"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
