"""`pasu export --model DIR --out DIR2 [--int8]`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the device model as ONNX graphs with explicit state (for pasu.lite and apps)",
        description="Write the front end, subsampling, local blocks, attention blocks, CTC head, decoder "
        "source projection and decoder step (and the confidence estimator) as ONNX graphs, their "
        "ORT-format copies and manifest.json into --out.",
    )
    p.add_argument("--model", required=True, help="model directory (config.yaml + *.pth)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--int8", action="store_true", help="dynamic int8 quantization of the encoder and decoder")
    p.add_argument("--confidence", help="confidence estimator (default: the one shipped beside the model)")
    p.add_argument("--no-ort", dest="ort", action="store_false", help="skip the ORT-format copies")
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pasu.tools.export import ExportOptions, UnsupportedModelError, export_model

    options = ExportOptions(
        int8=args.int8,
        ort=args.ort,
        opset=args.opset,
        confidence=Path(args.confidence) if args.confidence else None,
    )
    try:
        manifest = export_model(args.model, args.out, options)
    except UnsupportedModelError as e:
        raise SystemExit(f"pasu export: {e}") from e
    m = json.loads(manifest.read_text())
    print(json.dumps({"manifest": str(manifest), "graphs": sorted(m["graphs"]), "int8": m["int8"]}))
    return 0
