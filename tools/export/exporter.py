"""`pasu export`: the device model's parts as ONNX graphs with explicit state, plus a manifest.

The graphs and their state contract are documented in :mod:`pasu.tools.export.graphs`;
``manifest.json`` carries everything else a runtime needs (tokens, front-end and encoder
options, the graphs' inputs and outputs, versions, checksums). ``pasu.lite`` reads it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch.export import Dim

import pasu.tools.export.graphs as G
from pasu.digest import file_sha256

log = logging.getLogger(__name__)

FORMAT = "pasu-onnx/1"
#: Graphs whose weights quantize well (MatMul-heavy); the front end's DFT and the tiny
#: confidence net stay float32 under --int8.
QUANTIZED = ("subsampling", "local_blocks", "attention", "ctc", "decoder_source", "decoder_step")


class UnsupportedModelError(ValueError):
    """The model cannot be exported with explicit streaming state."""


@dataclass(frozen=True)
class ExportOptions:
    """What to write.

    Attributes:
        int8: dynamic int8 quantization of the encoder and decoder graphs' weights.
        ort: also write ORT-format copies (onnxruntime's converter), for mobile builds.
        opset: ONNX opset of the graphs.
        confidence: the estimator to export; None: the one shipped beside the model, if any.
    """

    int8: bool = False
    ort: bool = True
    opset: int = 18
    confidence: Path | None = None


def why_not_exportable(model: torch.nn.Module) -> str | None:
    """Reason ``model`` has no streaming export, or None."""
    from pasu.decoding import kv_decoder
    from pasu.encoders.incremental import why_not_incremental

    reason = why_not_incremental(model)
    if reason is not None:
        return reason
    m = cast(Any, model)
    stft, logmel = m.frontend.stft, m.frontend.logmel
    if stft.normalized or not stft.onesided:
        return "the STFT is normalized or two-sided"
    if logmel.log_base is not None:
        return f"log-mel with log base {logmel.log_base} (natural log only)"
    if getattr(m, "postencoder", None) is not None:
        return "a postencoder is not supported"
    if not kv_decoder.supports(m.decoder):
        return f"decoder {type(m.decoder).__name__} is not ESPnet's plain Transformer decoder"
    return None


Spec = tuple[torch.nn.Module, tuple, list[str], list[str], Any]  # module, example args, inputs, outputs, dynamic


def _export(spec: Spec, path: Path, opset: int) -> None:
    module, args, names, outputs, dynamic = spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_shapes=dynamic,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def _io(model) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX model: name, dtype and shape (a string names a free axis)."""
    import onnx

    def describe(values) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def _graph_specs(model: torch.nn.Module, estimator) -> dict[str, Spec]:
    """name -> (module, example args, input names, output names, dynamic shapes)."""
    m = cast(Any, model)
    stft = m.frontend.stft
    enc = m.encoder
    D = enc.output_size()
    n_mels = m.frontend.output_size()
    local = G.LocalBlocksGraph(enc.local_blocks)
    B = len(enc.local_blocks)
    dec = m.decoder
    Ld = len(dec.decoders)
    heads, d_k = dec.decoders[0].self_attn.h, dec.decoders[0].self_attn.d_k
    frames, T, N, L = Dim("frames"), Dim("T"), Dim("N"), Dim("L")
    specs: dict[str, Spec] = {
        "frontend": (
            G.FrontendGraph(stft.n_fft, stft.win_length, stft.window, m.frontend.logmel.melmat, m.normalize),
            (torch.randn(6, stft.n_fft),),
            ["frames"],
            ["feats"],
            {"frames": {0: frames}},
        ),
        "subsampling": (
            G.SubsamplingGraph(enc.embed),
            (torch.randn(1, 23, n_mels),),
            ["feats"],
            ["x"],
            {"feats": {1: Dim("feat_frames", min=7)}},
        ),
        "local_blocks": (
            local,
            (
                torch.randn(1, 5, D),
                torch.tensor([3]),
                torch.tensor([100]),
                torch.randn(B, 1, local.kernel - 1, D),
                torch.randn(B, 1, local.residual_frames, D),
            ),
            ["x", "offset", "limit", "gates", "residual"],
            ["y", "gates_out", "residual_out"],
            {"x": {1: T}, "offset": None, "limit": None, "gates": None, "residual": None},
        ),
        "attention": (G.AttentionGraph(enc), (torch.randn(1, 7, D),), ["x"], ["enc"], {"x": {1: T}}),
        "ctc": (G.CtcGraph(m.ctc), (torch.randn(1, 7, D),), ["enc"], ["logp"], {"enc": {1: T}}),
        "decoder_source": (
            G.DecoderSourceGraph(dec),
            (torch.randn(1, 9, D),),
            ["enc"],
            ["src_k", "src_v"],
            {"enc": {1: T}},
        ),
        "decoder_step": (
            G.DecoderStepGraph(dec),
            (
                torch.tensor([3, 4, 5]),
                torch.tensor([4]),
                torch.randn(Ld, 3, heads, 4, d_k),
                torch.randn(Ld, 3, heads, 4, d_k),
                torch.randn(Ld, 1, heads, 9, d_k),
                torch.randn(Ld, 1, heads, 9, d_k),
            ),
            ["token", "position", "k", "v", "src_k", "src_v"],
            ["logp", "k_out", "v_out"],
            {
                "token": {0: N},
                "position": None,
                "k": {1: N, 3: L},
                "v": {1: N, 3: L},
                "src_k": {3: T},
                "src_v": {3: T},
            },
        ),
    }
    if estimator is not None:
        from pasu.device.confidence import FEATURES, SEQ_LEN

        net = estimator.net.eval()
        F = len(FEATURES)
        if net.kind == "cnn":
            specs["confidence"] = (
                G.ConfidenceGraph(net),
                (torch.randn(2, F), torch.randn(2, SEQ_LEN, F)),
                ["features", "sequence"],
                ["p_right"],
                {"features": {0: Dim("batch")}, "sequence": {0: Dim("batch")}},
            )
        else:
            specs["confidence"] = (
                G.ConfidenceGraph(net),
                (torch.randn(2, F),),
                ["features"],
                ["p_right"],
                {"features": {0: Dim("batch")}},
            )
    return specs


def _options(model: torch.nn.Module, specs, sample_rate: int) -> dict[str, Any]:
    from pasu.encoders.late import subsampling_convs
    from pasu.encoders.stages import SubsamplingStage

    m = cast(Any, model)
    stft = m.frontend.stft
    enc = m.encoder
    sub = SubsamplingStage(enc.embed, subsampling_convs(enc.embed))
    local = specs["local_blocks"][0]
    dec = m.decoder
    return {
        "frontend": {
            "sample_rate": sample_rate,
            "n_fft": int(stft.n_fft),
            "win_length": int(stft.win_length),
            "hop_length": int(stft.hop_length),
            "window": stft.window,
            "center": bool(stft.center),
            "n_mels": int(m.frontend.output_size()),
        },
        "encoder": {
            "d_model": int(enc.output_size()),
            "subsampling": {
                "convs": [list(c) for c in sub.convs],
                "stride": sub.stride,
                "receptive_field": sub.receptive_field,
            },
            "local_blocks": len(enc.local_blocks),
            "kernel": local.kernel,
            "right_context": local.right,
            "residual_frames": local.residual_frames,
            "attention_blocks": len(enc.attention_blocks),
        },
        "decoder": {
            "layers": len(dec.decoders),
            "heads": int(dec.decoders[0].self_attn.h),
            "d_k": int(dec.decoders[0].self_attn.d_k),
        },
    }


def _convert_to_ort(out: Path) -> None:
    """ORT-format copies of every graph (``*.ort``) for onnxruntime's mobile packages."""
    cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(out), "--output_dir", str(out)]
    cmd += ["--optimization_style", "Fixed"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ORT conversion failed: {done.stderr[-2000:]}")


def export_model(model_dir: str | Path, out_dir: str | Path, options: ExportOptions = ExportOptions()) -> Path:
    """Write the graphs, their ORT copies and ``manifest.json`` into ``out_dir``; return the manifest path."""
    import onnx
    import onnxruntime

    from pasu import __version__
    from pasu.models import load_model

    loaded = load_model(model_dir)
    reason = why_not_exportable(loaded.model)
    if reason is not None:
        raise UnsupportedModelError(f"{model_dir}: cannot export with streaming state: {reason}")
    estimator = _estimator(Path(model_dir), options.confidence)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = _graph_specs(loaded.model, estimator)
    graphs: dict[str, Any] = {}
    with torch.no_grad():
        for name, spec in specs.items():
            path = out / f"{name}.onnx"
            log.info("exporting %s", path)
            _export(spec, path, options.opset)
            if options.int8 and name in QUANTIZED:
                _quantize(path)
            proto = onnx.load(str(path))
            onnx.checker.check_model(proto, full_check=True)
            graphs[name] = {"file": path.name, **_io(proto)}
    if options.ort:
        _convert_to_ort(out)
        for name, g in graphs.items():
            ort_file = out / f"{name}.ort"
            if ort_file.is_file():
                g["ort"] = ort_file.name
    vad = _copy_vad_model(out)
    files = sorted(p for p in out.iterdir() if p.suffix in (".onnx", ".ort"))
    manifest = {
        "format": FORMAT,
        "model": {
            "name": loaded.name,
            "version": loaded.version,
            "weights_sha256": loaded.weights_digest(),
        },
        "int8": options.int8,
        "opset": options.opset,
        "versions": {
            "pasu": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "tokens": list(loaded.token_list),
        "sos": loaded.sos,
        "eos": loaded.eos,
        "blank": 0,
        # how tokens become text (pasu.lite.recognizer.detokenizer); None: joined with spaces
        "token_type": loaded.config.get("token_type") if loaded.tokenizer is not None else None,
        **_options(loaded.model, specs, loaded.sample_rate),
        "confidence": _confidence_meta(estimator),
        "vad": vad,
        "graphs": graphs,
        "sha256": {p.name: file_sha256(p) for p in files},
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def _copy_vad_model(out: Path) -> dict[str, Any] | None:
    """The silero VAD's ONNX file beside the graphs, for installs without the silero-vad
    package (it depends on torch); ``pasu.device.vad`` falls back to it."""
    import shutil

    from pasu.device.vad import SILERO_FILE, silero_model_path

    try:
        source = silero_model_path()
    except ImportError as e:
        log.warning("the export carries no VAD model: %s", e)
        return None
    shutil.copyfile(source, out / SILERO_FILE)
    return {"kind": "silero", "file": SILERO_FILE}


def _quantize(path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".fp32.onnx")
    path.rename(tmp)
    try:
        quantize_dynamic(str(tmp), str(path), weight_type=QuantType.QInt8)
    finally:
        tmp.unlink()


def _estimator(model_dir: Path, path: Path | None):
    from pasu.device.confidence import SHIPPED_NAME, ConfidenceEstimator

    if path is None and (model_dir / SHIPPED_NAME).is_file():
        path = model_dir / SHIPPED_NAME
    return ConfidenceEstimator.load(path) if path is not None else None


def _confidence_meta(estimator) -> dict[str, Any] | None:
    if estimator is None:
        return None
    from pasu.device.confidence import FEATURES, MARGIN_CAP, SEQ_LEN

    return {
        "kind": estimator.net.kind,
        "features": list(FEATURES),
        "uses": list(estimator.net.uses),
        "seq_len": SEQ_LEN,
        "margin_cap": MARGIN_CAP,
        "rejection_threshold": estimator.rejection_threshold,
    }
