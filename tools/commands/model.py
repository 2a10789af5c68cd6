"""`pasu model tiny`: build a tiny ESPnet model from a shipped config (tests, benchmarks)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="model utilities")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    t = msub.add_parser("tiny", help="build a tiny model with seeded random weights")
    t.add_argument("--kind", choices=("conformer", "branchformer", "late"), default="conformer")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, help="output directory")
    t.set_defaults(func=run_tiny)


def run_tiny(args: argparse.Namespace) -> int:
    from pasu.tools.tiny import TinyModelOptions, build_tiny_model

    out = build_tiny_model(args.out, TinyModelOptions(kind=args.kind, seed=args.seed))
    print(out)
    return 0
