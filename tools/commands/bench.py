"""`pasu bench …`: commands that print figures; each ends with one JSON line."""

from __future__ import annotations

import argparse
import json

from pasu.tools.commands.common import add_decoding_args, add_model_args, decoding_options, expand_audio_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (pasu vs stock ESPnet, side by side)")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)

    d = bsub.add_parser("decoder", help="ESPnet Speech2Text vs pasu's decoder: speed and identity")
    add_model_args(d)
    add_decoding_args(d)
    d.add_argument(
        "--audio", nargs="+", default=None, help="audio files or a list file / wav.scp (default: the 24 bundled clips)"
    )
    d.add_argument("--repeat", type=int, default=1, help="decode each utterance N times per side")
    d.add_argument("--no-batch", action="store_true", help="skip the batched-decoding figure")
    d.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    d.add_argument("--json-out", default=None, help="also write per-utterance rows as JSON here")
    d.set_defaults(func=run_decoder)

    from pasu.tools.bench.cloud import register_bench

    register_bench(bsub)  # pasu bench cloud
    from pasu.tools.bench.soak import register_bench as register_soak

    register_soak(bsub)  # pasu bench soak
    from pasu.tools.bench.vad import register_bench as register_vad

    register_vad(bsub)  # pasu bench vad
    from pasu.tools.bench.runtime import register_bench as register_runtime

    register_runtime(bsub)  # pasu bench runtime

    lat = bsub.add_parser("latency", help="end-of-speech latency: stock ESPnet vs a pasu streaming session")
    add_model_args(lat)
    add_decoding_args(lat)
    lat.add_argument(
        "--audio",
        nargs="+",
        default=None,
        help="audio files, a list file, or an ESPnet data dir / wav.scp (default: the bundled clips)",
    )
    lat.add_argument("--text", default=None, help="references (ESPnet text file) for accuracy")
    lat.add_argument("--chunk-s", type=float, default=0.16, help="audio chunk duration (default 0.16 s)")
    lat.add_argument("--realtime", action="store_true", help="pace audio on the wall clock instead of a simulated one")
    lat.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="measure compute as elapsed time, or as this thread's CPU time (robust on a shared "
        "machine; use with --threads 1)",
    )
    lat.add_argument("--no-ablation", action="store_true", help="skip the one-technique-at-a-time rows")
    lat.add_argument(
        "--off",
        nargs="*",
        default=[],
        metavar="TECHNIQUE",
        help="techniques to turn off: late_context pilots beam_collapse beam_termination ctc_leap",
    )
    lat.add_argument("--pilot-period-s", type=float, default=None)
    lat.add_argument(
        "--collapse-margin",
        type=float,
        default=None,
        help="beam collapse: the latest pilot's n-best score margin it needs "
        "(default: StreamingOptions.collapse_margin)",
    )
    lat.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="any StreamingOptions field, e.g. --set collapse_holdback=1 (repeat)",
    )
    lat.add_argument("--limit", type=int, default=None, help="at most N utterances")
    lat.add_argument("--threads", type=int, default=None)
    lat.add_argument(
        "--memory", action="store_true", help="also measure each side's peak memory, each in a fresh child process"
    )
    lat.add_argument("--json-out", default=None)
    lat.set_defaults(func=run_latency)


def run_decoder(args: argparse.Namespace) -> int:
    import torch

    from pasu.model_store import resolve_model
    from pasu.models import load_model
    from pasu.resources import example_audio
    from pasu.tools.bench.decoder import DecoderBenchOptions, format_table, result_dict, run_decoder_bench

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(resolve_model(args.model), args.device)
    files = expand_audio_args(args.audio) if args.audio else [str(f) for f in example_audio()]
    result = run_decoder_bench(
        model, files, decoding_options(args), DecoderBenchOptions(repeat=args.repeat, batch=not args.no_batch)
    )
    print(
        f"model: {model.name} ({model.files.root}); beam {args.beam_size}, ctc_weight {args.ctc_weight}; "
        f"torch threads {torch.get_num_threads()}"
    )
    print(format_table(result))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result_dict(result), f, indent=2)
    print(json.dumps(result.summary()), flush=True)
    return 0 if result.identical else 1


def run_latency(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from pasu.audio import read_scp
    from pasu.model_store import resolve_model
    from pasu.models import load_model
    from pasu.resources import AUDIO_DIR, example_audio
    from pasu.streaming import TECHNIQUES, StreamingOptions
    from pasu.tools.bench.latency import LatencyBenchOptions, format_table, result_dict, run_latency_bench
    from pasu.tools.commands.common import parse_settings

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(resolve_model(args.model), args.device)
    refs: dict[str, str] = {}
    if args.audio:
        items = list(args.audio)
        if len(items) == 1 and Path(items[0]).is_dir():  # an ESPnet data dir
            d = Path(items[0])
            items = [str(d / "wav.scp")]
            refs = read_scp(d / "text") if (d / "text").is_file() else {}
        files = expand_audio_args(items)
    else:
        files = [str(f) for f in example_audio()]
        refs = read_scp(AUDIO_DIR / "text")
    if args.text:
        refs = read_scp(args.text)
    if args.limit:
        files = files[: args.limit]
    bad = [t for t in args.off if t not in TECHNIQUES]
    if bad:
        raise SystemExit(f"unknown technique(s) {bad}; choose from {TECHNIQUES}")
    streaming = StreamingOptions().with_(**{t: False for t in args.off})
    if args.pilot_period_s:
        streaming = streaming.with_(pilot_period_s=args.pilot_period_s)
    if args.collapse_margin is not None:
        streaming = streaming.with_(collapse_margin=args.collapse_margin)
    if args.set:
        streaming = streaming.with_(**parse_settings(StreamingOptions, args.set))
    result = run_latency_bench(
        model,
        files,
        refs,
        decoding_options(args),
        streaming,
        LatencyBenchOptions(
            chunk_s=args.chunk_s, realtime=args.realtime, ablation=not args.no_ablation, clock=args.clock
        ),
    )
    print(
        f"model: {model.name} ({model.files.root}); beam {args.beam_size}; chunk {args.chunk_s} s; "
        f"{'real-time' if args.realtime else 'simulated'} clock; torch threads {torch.get_num_threads()}"
    )
    print(format_table(result))
    summary = result.summary()
    if args.memory:
        from pasu.tools.bench.memory import measure_in_child

        mem = {side: measure_in_child(side, str(model.files.root), files) for side in ("espnet", "pasu")}
        for side, m in mem.items():
            print(f"peak memory {side}: {m['peak_mb']:.0f} MB ({m['growth_mb']:.0f} MB over the loaded model)")
        summary.update(
            peak_mb_espnet=mem["espnet"]["peak_mb"],
            peak_mb_pasu=mem["pasu"]["peak_mb"],
            memory_ratio=round(mem["pasu"]["peak_mb"] / mem["espnet"]["peak_mb"], 3),
        )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({**result_dict(result), "summary": summary}, f, indent=2)
    print(json.dumps(summary), flush=True)
    return 0
