"""`pasu data synth` and `pasu data engines`: a thin layer over pasu.tools.data.synth."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pasu.cli import flag_values

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="make training/test data", description="Make training and test data.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser(
        "synth",
        help="synthesize a SLURP-style spoken-command corpus with espeak-ng/flite/festival",
        description="Synthesize a SLURP-style spoken-command corpus (ESPnet data dirs: "
        "train, dev, test_voices, test_hard, calib) from Debian's TTS engines.",
    )
    _add_corpus_args(p, "data/synth")
    for split, default in (("train", 12000), ("dev", 600), ("test_voices", 600), ("test_hard", 600)):
        p.add_argument(
            f"--{split.replace('_', '-')}", type=int, default=default, help=f"{split} utterances (default: %(default)s)"
        )
    p.add_argument(
        "--calib",
        type=int,
        default=600,
        help="calib utterances: training voices in test_hard's noise, for the device's "
        "confidence estimator (default: %(default)s)",
    )
    p.add_argument(
        "--per-split",
        "--limit",
        type=int,
        metavar="N",
        dest="per_split",
        help="N utterances in every split (overrides the sizes above)",
    )
    p.add_argument(
        "--splits", default=",".join(_splits()), help="comma-separated splits to make (default: %(default)s)"
    )
    p.add_argument(
        "--format",
        choices=("flac", "wav"),
        default="flac",
        dest="audio_format",
        help="audio file format (default: %(default)s)",
    )
    p.add_argument("--grammar", type=Path, help="grammar YAML (default: the packaged one)")
    p.add_argument("--overwrite", action="store_true", help="replace existing split dirs")
    p.add_argument(
        "--text-variety",
        type=float,
        default=0.0,
        metavar="P",
        help="share of train sentences recombined within their intent so the "
        "decoder cannot memorise the templates (default: %(default)s)",
    )
    p.add_argument("--text-only", action="store_true", help="only plan and write text/utt2voice (no audio)")
    p.add_argument("--list-engines", action="store_true", help="say which engines and voices are installed, and exit")
    p.set_defaults(func=run_synth)

    s = sub.add_parser(
        "subset",
        help="copy a small, self-contained, intent-balanced subset of a data dir",
        description=run_subset.__doc__,
    )
    s.set_defaults(func=run_subset)
    s.add_argument("--data", type=Path, required=True, help="source data dir (wav.scp, text)")
    s.add_argument("--out", type=Path, required=True, help="output dir (replaced)")
    s.add_argument("--size", type=int, default=200, help="utterances (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    s.add_argument("--max-mb", type=float, default=10.0, help="refuse a subset bigger than this (default: %(default)s)")

    r = sub.add_parser(
        "rejection",
        help="test sets for rejection: noise only, out-of-domain speech, commands after noise",
        description="Make the data dirs that measure false accepts and false rejects (issue 28): "
        "noise (no speech: coloured noise, babble, tones, bursts, several levels, with and "
        "without silence around), ood (non-command sentences read by the test voices) and "
        "lead_noise (commands in noise that starts before the speech).",
    )
    _add_corpus_args(r, "data/rejection")
    for kind, default, what in (
        ("noise", 280, "noise-only"),
        ("ood", 240, "out-of-domain"),
        ("lead-noise", 120, "lead_noise"),
    ):
        r.add_argument(f"--{kind}", type=int, default=default, help=f"{what} clips (default: %(default)s)")
    r.add_argument("--sets", default="noise,ood,lead_noise", help="comma-separated sets (default: %(default)s)")
    r.set_defaults(func=run_rejection)

    e = sub.add_parser("engines", help="say which TTS engines and voices are installed")
    e.set_defaults(func=run_engines)


def _add_corpus_args(p: argparse.ArgumentParser, out: str) -> None:
    """The flags both corpus recipes (synth, rejection) take."""
    p.add_argument("--out", type=Path, default=Path(out), help="output dir (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("-j", "--jobs", type=int, default=0, help="worker processes (default: all cores)")
    p.add_argument("--no-festival", action="store_true", help="do not use festival test voices even when installed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _splits() -> tuple[str, ...]:
    from pasu.tools.data.synth import SPLITS

    return SPLITS


def run_engines(args: argparse.Namespace) -> int:
    from pasu.tools.data.engines import detect_engines

    engines = detect_engines()
    print(engines.describe())
    return 0 if engines.training_voices() and engines.test_voices() else 1


def run_rejection(args: argparse.Namespace) -> int:
    from pasu.tools.data.rejection import RejectionOptions, make_sets

    try:
        opts = RejectionOptions(
            out_dir=args.out,
            festival=not args.no_festival,
            sets=tuple(s.strip() for s in args.sets.split(",") if s.strip()),
            progress=not args.no_progress,
            **flag_values(args, "seed noise ood lead_noise jobs"),
        )
        counts = make_sets(opts)
    except (RuntimeError, ValueError) as err:
        print(f"pasu data rejection: {err}", file=sys.stderr)
        return 2
    for name, n in counts.items():
        print(f"{name:12s} {n:6d} clips  {args.out / name}")
    return 0


def run_subset(args: argparse.Namespace) -> int:
    """Copy N utterances of an ESPnet data dir (round-robin over intents, seeded) with their
    audio into a self-contained dir; the shipped evaluation subset is made this way."""
    from pasu.tools.data.subset import SubsetOptions, make_subset

    try:
        ids = make_subset(args.data, args.out, SubsetOptions(args.size, args.seed, args.max_mb))
    except (OSError, ValueError) as err:
        print(f"pasu data subset: {err}", file=sys.stderr)
        return 2
    print(f"{len(ids)} utterances -> {args.out}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    if args.list_engines:
        return run_engines(args)
    from pasu.tools.data.engines import detect_engines
    from pasu.tools.data.grammar import Grammar
    from pasu.tools.data.synth import SynthOptions, plan_corpus, synthesize_corpus, write_texts

    opts = SynthOptions(
        out_dir=args.out,
        splits=tuple(s.strip() for s in args.splits.split(",") if s.strip()),
        festival=not args.no_festival,
        grammar_path=args.grammar,
        progress=not args.no_progress,
        **flag_values(args, "seed train dev test_voices test_hard calib jobs audio_format overwrite text_variety"),
    )
    if args.per_split is not None:
        opts = opts.with_per_split(args.per_split)
    try:
        if args.text_only:
            plans = plan_corpus(opts, Grammar.load(opts.grammar_path), detect_engines())
            write_texts(opts, plans)
            print(f"planned {sum(len(p) for p in plans.values())} utterances in {opts.out_dir}")
            return 0
        summary = synthesize_corpus(opts)
    except (FileExistsError, RuntimeError, ValueError) as err:
        print(f"pasu data synth: {err}", file=sys.stderr)
        return 2
    for split, n in summary.counts.items():
        print(f"{split:12s} {n:6d} utterances {summary.seconds[split] / 3600:6.2f} h  {summary.out_dir / split}")
    print(f"done in {summary.wall_s:.0f} s" + (f"; {len(summary.failed)} failed" if summary.failed else ""))
    return 1 if summary.failed else 0
