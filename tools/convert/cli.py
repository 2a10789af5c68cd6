"""`pasu convert`: a thin layer over :mod:`pasu.tools.convert`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="a late-contextualized device model from a trained Branchformer/E-Branchformer",
        description="Turn an ESPnet2 Branchformer or E-Branchformer ASR/SLU model (the cloud's full model) "
        "into a pasu device model by the PASU rule: measure each layer's attention-branch weight on --audio; "
        "attention stays where it weighs more than --threshold (the lowest such layer and all above), the "
        "layers below keep only their cgMLP branch and run as audio arrives. Decoder and CTC head are "
        "shared bit for bit. With --distill, the converted model then trains on unlabeled audio with the "
        "full model's 1-best as targets (ESPnet's trainer; rerun to resume). Prints one JSON line.",
    )
    p.add_argument("--model", type=Path, required=True, help="the full model's dir (config.yaml + weights)")
    p.add_argument("--out", type=Path, required=True, help="where the device model package goes")
    p.add_argument("--audio", type=Path, required=True, help="calibration audio: a data dir (wav.scp) or audio files")
    p.add_argument("--threshold", type=float, default=0.2, help="attention-branch weight threshold (%(default)s)")
    p.add_argument("--limit", type=int, default=200, help="calibration utterances (default: %(default)s)")
    p.add_argument(
        "--attention-blocks", type=int, help="set the number of attention layers instead of the rule (top layers)"
    )
    p.add_argument(
        "--right-context",
        type=int,
        help="cut the local layers' kernels to this many future frames (default: whole, exact; fewer: less "
        "to recompute at the end of speech, an approximation for --distill to train on)",
    )
    p.add_argument("--name", help="the package's name (default: the source's + '-late')")
    p.add_argument("--model-version", default="1", help="the package's version (default: %(default)s)")
    d = p.add_argument_group("distillation")
    d.add_argument("--distill", type=Path, metavar="AUDIO_DIR", help="unlabeled audio (data dir or files)")
    d.add_argument("--exp", type=Path, help="distillation work dir (default: OUT.distill); kept for --resume")
    d.add_argument("--epochs", type=int, default=4, help="ESPnet epochs (default: %(default)s)")
    d.add_argument("--distill-limit", type=int, help="utterances of AUDIO_DIR (default: all)")
    d.add_argument("--lr", type=float, default=0.0005, help="peak learning rate (default: %(default)s)")
    d.add_argument("--batch-bins", type=int, help="ESPnet numel batch size (default: the model's config)")
    d.add_argument("--iters-per-epoch", type=int, help="batches per epoch (default: all the audio)")
    d.add_argument("--espnet-arg", action="append", default=[], metavar="ARG", help="extra ESPnet argument (repeat)")
    e = p.add_argument_group("evaluation (pasu eval's scores, after conversion and after distillation)")
    e.add_argument("--eval", type=Path, action="append", default=[], metavar="DATA", help="data dir (repeat)")
    e.add_argument("--eval-limit", type=int, help="first N utterances of each")
    e.add_argument("--beam-size", type=int, default=10, help="beam of the evaluation and the teacher")
    e.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    e.add_argument("--json-out", type=Path, help="also write the JSON result here")
    p.set_defaults(func=run_convert)


def _evaluate(model_dir: Path, data: list[Path], limit: int | None, beam: int) -> dict[str, Any]:
    from pasu.decoding import DecodingOptions
    from pasu.tools.train.evaluate import evaluate

    out = {}
    for d in data:
        result = evaluate(model_dir, d, limit=limit, options=DecodingOptions(beam_size=beam), progress=False)
        out[d.name] = result.summary()
        log.warning("%s on %s: %s", model_dir, d, out[d.name])
    return out


def run_convert(args: argparse.Namespace) -> int:
    import torch

    from pasu.tools.convert.convert import ConvertOptions, UnsupportedModelError, convert_model

    if args.threads:
        torch.set_num_threads(args.threads)
    exp = args.exp or args.out.with_name(args.out.name + ".distill")
    converted = exp / "converted" if args.distill else args.out
    options = ConvertOptions(
        threshold=args.threshold,
        limit=args.limit,
        name=args.name,
        version=args.model_version,
        num_attention_blocks=args.attention_blocks,
        right_context=args.right_context,
    )
    try:
        conversion = convert_model(args.model, converted, args.audio, options)
    except UnsupportedModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"conversion": conversion.to_json(), "package": str(args.out)}
    if args.eval:
        result["eval_converted"] = _evaluate(converted, args.eval, args.eval_limit, args.beam_size)
    if args.distill:
        from pasu.tools.convert.distill import DistillOptions, distill

        distill(
            converted,
            args.model,
            args.distill,
            exp,
            args.out,
            DistillOptions(
                epochs=args.epochs,
                limit=args.distill_limit,
                beam_size=args.beam_size,
                lr=args.lr,
                batch_bins=args.batch_bins,
                num_iters_per_epoch=args.iters_per_epoch,
                threads=args.threads or 1,
                extra_args=tuple(args.espnet_arg),
            ),
        )
        if args.eval:
            result["eval_distilled"] = _evaluate(args.out, args.eval, args.eval_limit, args.beam_size)
    if args.eval:
        from pasu.tools.train.package import save_card_row

        final = result.get("eval_distilled", result.get("eval_converted", {}))
        for name, summary in final.items():
            save_card_row(args.out, name, summary)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0
