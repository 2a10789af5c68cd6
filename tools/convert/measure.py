"""How much each layer of a trained Branchformer / E-Branchformer relies on its attention branch.

Measured on real audio the user gives, one utterance at a time (no padding):

* Branchformer with ``merge_method: learned_ave`` (the PASU paper's case): the
  layer's own merge weight of the attention branch, ``softmax(w_att, w_mlp)[0]``,
  per utterance (what :mod:`pasu.tools.train.branches` measures);
* every other merge (Branchformer ``concat`` / ``fixed_ave``, E-Branchformer's
  convolution + projection): the attention branch's share of the merged output,
  ``|A_t| / (|A_t| + |B_t|)`` per frame, where ``A_t`` and ``B_t`` are the two
  branches' terms of the merge projection's output (its bias left out).

Besides the weight, the same pass gathers what replaces the branch when the
layer becomes local: the branch's mean contribution (``attention_mean``) and,
for ``learned_ave``, the cgMLP branch's mean weight (``cgmlp_scale``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pasu.audio import read_audio, read_wav_scp

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


@dataclass
class LayerBranches:
    """One layer's measurements over the calibration audio."""

    attention_weight: float  # mean over utterances
    attention_mean: torch.Tensor  # (D,) the removed branch's mean term, frame-weighted
    cgmlp_scale: float = 1.0  # learned_ave: mean w_mlp, frame-weighted; else 1


@dataclass
class BranchMeasurement:
    """Every layer's :class:`LayerBranches`, bottom first, and what they were measured on."""

    layers: list[LayerBranches]
    utterances: int
    frames: int
    definition: str
    audio: str = ""
    weights: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.weights = [round(layer.attention_weight, 4) for layer in self.layers]


def audio_files(audio_dir: Path, limit: int | None = None) -> list[Path]:
    """An ESPnet data dir's ``wav.scp`` entries, else the dir's audio files (sorted)."""
    if (audio_dir / "wav.scp").is_file():
        files = [Path(p) for p in read_wav_scp(audio_dir).values()]
    elif audio_dir.is_dir():
        files = sorted(p for p in audio_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    else:
        raise FileNotFoundError(f"--audio {audio_dir}: no such directory")
    if not files:
        raise ValueError(f"no audio in {audio_dir} (a wav.scp or {', '.join(AUDIO_SUFFIXES)} files)")
    return files[:limit] if limit else files


class _Recorder:
    """Forward hooks on one layer: what it computed in the current utterance."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.out: dict[str, torch.Tensor] = {}
        self.handles = []
        for name in ("attn", "cgmlp", "weight_proj1", "weight_proj2", "merge_proj"):
            module = getattr(layer, name, None)
            if isinstance(module, torch.nn.Module):
                self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module, inputs, output) -> None:
            if name == "merge_proj":
                self.out[name] = inputs[0].detach()
            else:
                self.out[name] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _norm_share(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    return float((na / (na + nb).clamp_min(1e-12)).mean())


def layer_terms(layer: Any, rec: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor, float]:
    """(attention weight, the attention term to average (B=1, T, D), cgMLP scale) of one utterance."""
    x1 = rec["attn"][0]  # (T, D)
    if hasattr(layer, "depthwise_conv_fusion"):  # E-Branchformer
        merged = rec["merge_proj"][0]  # (T, 2D): x_concat + its depthwise conv
        d = merged.size(-1) // 2
        w = layer.merge_proj.weight
        a, b = merged[:, :d] @ w[:, :d].T, merged[:, d:] @ w[:, d:].T
        return _norm_share(a, b), x1, 1.0
    method = layer.merge_method
    if method == "learned_ave":
        w = torch.softmax(torch.cat([rec["weight_proj1"], rec["weight_proj2"]], dim=-1), dim=-1)[0]
        return float(w[0]), float(w[0]) * x1, float(w[1])
    x2 = rec["cgmlp"][0]
    w = layer.merge_proj.weight
    if method == "concat":
        d = x1.size(-1)
        return _norm_share(x1 @ w[:, :d].T, x2 @ w[:, d:].T), x1, 1.0
    if method == "fixed_ave":
        c = float(layer.cgmlp_weight)
        return _norm_share((1 - c) * x1 @ w.T, c * x2 @ w.T), (1 - c) * x1, c
    raise ValueError(f"unknown merge_method {method!r}")


def definition(layer: Any) -> str:
    """What 'attention-branch weight' means for this layer type (for the model card)."""
    if getattr(layer, "merge_method", None) == "learned_ave":
        return "the learned merge weight of the attention branch (softmax over the two branches), mean over utterances"
    return (
        "the attention branch's share |A|/(|A|+|B|) of the merge projection's output per frame "
        "(A, B: the two branches' terms), mean over frames, then utterances"
    )


@torch.inference_mode()
def measure(model: Any, files: Iterable[Path], audio: str = "") -> BranchMeasurement:
    """Run ``model.encode`` on each file and gather every layer's :class:`LayerBranches`."""
    layers = list(model.encoder.encoders)
    recorders = [_Recorder(layer) for layer in layers]
    weights: list[list[float]] = [[] for _ in layers]
    sums: list[torch.Tensor | None] = [None] * len(layers)
    scales = [0.0] * len(layers)
    frames = utterances = 0
    device = next(model.parameters()).device
    try:
        for path in files:
            x = torch.as_tensor(read_audio(path), dtype=torch.float32, device=device)[None]
            out, _ = model.encode(x, torch.tensor([x.size(1)], device=device))
            t = out.size(1)
            for i, (layer, rec) in enumerate(zip(layers, recorders, strict=True)):
                if "attn" not in rec.out or "cgmlp" not in rec.out:  # one branch only: all or no attention
                    weights[i].append(0.0 if "attn" not in rec.out else 1.0)
                    continue
                w, term, scale = layer_terms(layer, rec.out)
                weights[i].append(w)
                total = sums[i]
                sums[i] = term.sum(0) if total is None else total + term.sum(0)
                scales[i] += scale * t
            frames += t
            utterances += 1
    finally:
        for rec in recorders:
            rec.remove()
    if utterances == 0:
        raise ValueError("no utterances to measure the branch weights on")
    d = model.encoder.output_size()
    result = [
        LayerBranches(
            attention_weight=float(np.mean(w)),
            attention_mean=(s / frames).float().cpu() if s is not None else torch.zeros(d),
            cgmlp_scale=scales[i] / frames if s is not None else 1.0,
        )
        for i, (w, s) in enumerate(zip(weights, sums, strict=True))
    ]
    log.info("attention-branch weight per layer: %s", ", ".join(f"{r.attention_weight:.3f}" for r in result))
    return BranchMeasurement(result, utterances, frames, definition(layers[0]), audio)
