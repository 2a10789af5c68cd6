"""`pasu`: one command-line entry point, a thin layer over the Python API.

Each component owns its subcommands in a small module exposing
``register(subparsers)``; this file only lists those modules. A module that is
not there yet (a component still to land) is skipped, but one that is there and
fails to import is an error, never silently hidden — except for a dependency that
only an extra installs (:data:`EXTRAS`: torch and ESPnet come with ``pasu[full]``,
the lite install has neither): its commands are still listed, and they, like any
command that needs such a module as it runs, say which extra to install.
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

# Subcommand modules, in the order their commands appear in `pasu --help`, with the
# top-level commands each registers (listed even when the module needs a missing extra).
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "pasu.tools.commands.demo": ("demo",),  # pasu demo
    "pasu.tools.commands.decode": ("decode",),  # pasu decode
    "pasu.tools.commands.model": ("model",),  # pasu model tiny
    "pasu.tools.commands.bench": ("bench",),  # pasu bench decoder|latency|cloud|soak|runtime
    "pasu.tools.data.cli": ("data",),  # pasu data synth
    "pasu.tools.train.cli": ("train", "eval"),  # pasu train, pasu eval
    "pasu.tools.convert.cli": ("convert",),  # pasu convert
    "pasu.cloud.cli": ("cloud",),  # pasu cloud serve
    "pasu.device.cli": ("device",),  # pasu device transcribe|run|train-confidence
    "pasu.tools.experiment.cli": ("experiment",),  # pasu experiment offload
    "pasu.tools.export.cli": ("export",),  # pasu export
}

#: Top-level modules that only an extra installs -> that extra (pyproject.toml).
EXTRAS: dict[str, str] = {
    **dict.fromkeys(
        (
            "torch",
            "torchaudio",
            "espnet",
            "espnet2",
            "grpc_tools",
            "grpc_health",
            "grpc_reflection",
            "jiwer",
            "tqdm",
            "prometheus_client",
            "yaml",
            "silero_vad",
            "matplotlib",
            "sentencepiece",
            "typeguard",
        ),
        "full",
    ),
    **dict.fromkeys(("onnxruntime", "webrtcvad"), "lite"),
    **dict.fromkeys(("onnx", "onnxscript"), "export"),
    "sounddevice": "mic",
}


def missing_extra(error: ImportError) -> str | None:
    """The extra that would install the module ``error`` says is missing, or None when
    the module is no extra's (a broken install, a bug: not to be explained away)."""
    if not isinstance(error, ModuleNotFoundError) or not error.name:
        return None
    return EXTRAS.get(error.name.split(".")[0])


def needs_extra_message(what: str, error: ImportError) -> str | None:
    """``error: WHAT needs MODULE, which this install lacks: pip install 'pasu[EXTRA]'``, or None."""
    extra = missing_extra(error)
    if extra is None:
        return None
    module = (error.name or "").split(".")[0]
    return f"error: {what} needs {module}, which this install lacks: pip install 'pasu[{extra}]'"


def flag_values(args: argparse.Namespace, names: str, prefix: str = "") -> dict[str, Any]:
    """``{name: args.<prefix><name>}`` for each of the space-separated ``names``: the options
    whose flag is named after the field it sets, so a CLI maps them without a line each."""
    return {name: getattr(args, prefix + name) for name in names.split()}


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError as e:  # its parent package is not there either, or needs an extra
        return missing_extra(e) is not None


def _unavailable(sub: argparse._SubParsersAction, command: str, error: ModuleNotFoundError) -> None:
    """``pasu COMMAND ...`` where its module needs a missing extra: any arguments, one message."""
    extra = missing_extra(error)
    p = argparse.ArgumentParser(prog=f"pasu {command}", add_help=False)
    p.set_defaults(func=None, command=command, unavailable=error)
    if command in sub.choices:  # registered before the import failed
        sub.choices[command] = p
    else:
        sub.add_parser(command, add_help=False, help=f"(needs pip install 'pasu[{extra}]')")
        sub.choices[command] = p


def _modules_for(argv: Sequence[str] | None) -> list[str]:
    """The command modules to register: only the one that owns the command ``argv`` names
    (a command's start-up then imports nothing of the others), else all of them."""
    command = next((a for a in argv or () if not a.startswith("-")), None)
    owners = [m for m, commands in COMMAND_MODULES.items() if command in commands]
    return owners or list(COMMAND_MODULES)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or (given ``argv``) with the command it names."""
    parser = argparse.ArgumentParser(
        prog="pasu",
        description="Hybrid edge-cloud speech understanding with pilot inference.",
    )
    parser.add_argument("--version", action="version", version=f"pasu {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _modules_for(argv):
        commands = COMMAND_MODULES[name]
        if not _present(name):
            continue
        try:
            importlib.import_module(name).register(sub)
        except ModuleNotFoundError as e:
            if missing_extra(e) is None:
                raise
            for command in commands:
                _unavailable(sub, command, e)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args, rest = parser.parse_known_args(argv)
    unavailable = getattr(args, "unavailable", None)
    if unavailable is not None:
        print(needs_extra_message(f"pasu {args.command}", unavailable), file=sys.stderr)
        return 2
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # ESPnet and numba are chatty at INFO; keep them at WARNING unless -vv.
    if args.verbose < 2:
        for noisy in ("espnet2", "numba", "espnet"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as e:  # a command that needs an extra this install lacks
        message = needs_extra_message(f"pasu {args.command}", e)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
