"""`pasu bench …`: commands that print figures; each ends with one JSON line."""

from __future__ import annotations

import argparse
import json

from pasu.commands.common import add_decoding_args, add_model_args, decoding_options, expand_audio_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (pasu vs stock ESPnet, side by side)")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)

    d = bsub.add_parser("decoder", help="ESPnet Speech2Text vs pasu's decoder: speed and identity")
    add_model_args(d)
    add_decoding_args(d)
    d.add_argument("--audio", nargs="+", default=None,
                   help="audio files or a list file / wav.scp (default: the 24 bundled clips)")
    d.add_argument("--repeat", type=int, default=1, help="decode each utterance N times per side")
    d.add_argument("--no-batch", action="store_true", help="skip the batched-decoding figure")
    d.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    d.add_argument("--json-out", default=None, help="also write per-utterance rows as JSON here")
    d.set_defaults(func=run_decoder)


def run_decoder(args: argparse.Namespace) -> int:
    import torch

    from pasu.bench.decoder import DecoderBenchOptions, format_table, result_dict, run_decoder_bench
    from pasu.model_store import resolve_model
    from pasu.models import load_model
    from pasu.resources import example_audio

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(resolve_model(args.model), args.device)
    files = expand_audio_args(args.audio) if args.audio else [str(f) for f in example_audio()]
    result = run_decoder_bench(
        model, files, decoding_options(args), DecoderBenchOptions(repeat=args.repeat, batch=not args.no_batch)
    )
    print(f"model: {model.name} ({model.files.root}); beam {args.beam_size}, ctc_weight {args.ctc_weight}; "
          f"torch threads {torch.get_num_threads()}")
    print(format_table(result))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result_dict(result), f, indent=2)
    print(json.dumps(result.summary()), flush=True)
    return 0 if result.identical else 1
