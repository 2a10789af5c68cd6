"""Export-only wrappers: each turns one part of the device model into a pure function.

Every graph takes its state as inputs and returns the new state as outputs, so a
runtime (``pasu.lite``, or an Android/iOS app) threads the state itself and a
graph call never changes anything. The arithmetic is the torch modules' own:
the wrappers only choose which pieces run and how the caches are laid out.

State contract (shapes; ``T`` frames, ``N`` hypotheses, ``L`` past tokens):

* ``frontend``: frames (N, n_fft) raw samples of N STFT windows -> feats (N, n_mels),
  log-mel with global MVN applied. Framing (reflect padding, hop) is the runtime's.
* ``subsampling``: feats (1, T, n_mels), T >= receptive field -> x (1, T', D).
* ``local_blocks``: x (1, T, D), offset (1,), limit (1,), gates (B, 1, K-1, D),
  residual (B, 1, R, D) -> y (1, T, D), gates', residual'. Output frame t is
  utterance frame ``offset + t - B * right``; frames outside [0, limit) are not real.
* ``attention``: x (1, T, D) local output of the whole utterance so far -> enc (1, T, D).
* ``ctc``: enc (1, T, D) -> CTC log-posteriors (1, T, V).
* ``decoder_source``: enc (1, T, D) -> src_k, src_v (layers, 1, heads, T, d_k).
* ``decoder_step``: token (N,), position (1,), k, v (layers, N, heads, L, d_k), src_k, src_v
  -> logp (N, V), k', v' (layers, N, heads, L + 1, d_k).
* ``confidence``: features (B, F) [and sequence (B, SEQ_LEN, F) for a cnn] -> P(right) (B,).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import nn

from pasu.decoding.kv_decoder import KVCacheDecoderSession


def stft_window(n_fft: int, win_length: int, name: str | None) -> torch.Tensor:
    """The (n_fft,) window torch.stft applies: ``win_length`` samples centred, zeros around."""
    if name is None:
        window = torch.ones(win_length)
    else:
        window = getattr(torch, f"{name}_window")(win_length, dtype=torch.float32)
    left = (n_fft - win_length) // 2
    return nn.functional.pad(window, (left, n_fft - win_length - left))


class FrontendGraph(nn.Module):
    """STFT power (a DFT as two matrix products), log-mel and global MVN, frame by frame.

    A DFT matrix instead of an FFT keeps the graph to MatMul, Mul and Log, which every
    ONNX runtime has; the runtime only has to cut the audio into windows.
    """

    cos: torch.Tensor  # buffers, registered in __init__
    sin: torch.Tensor
    melmat: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_fft: int, win_length: int, window: str | None, melmat: torch.Tensor, mvn: Any) -> None:
        super().__init__()
        bins = n_fft // 2 + 1
        n = torch.arange(n_fft, dtype=torch.float64)[:, None]
        k = torch.arange(bins, dtype=torch.float64)[None, :]
        angle = 2 * math.pi * n * k / n_fft
        w = stft_window(n_fft, win_length, window).double()[:, None]
        self.register_buffer("cos", (w * torch.cos(angle)).float())
        self.register_buffer("sin", (w * torch.sin(angle)).float())
        self.register_buffer("melmat", melmat.detach().float().clone())
        dim = melmat.size(1)
        mean = torch.zeros(dim) if mvn is None or not mvn.norm_means else mvn.mean.detach().float()
        std = torch.ones(dim) if mvn is None or not mvn.norm_vars else mvn.std.detach().float()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        re = frames @ self.cos
        im = frames @ self.sin
        mel = torch.clamp((re * re + im * im) @ self.melmat, min=1e-10)
        return (mel.log() - self.mean) / self.std


class SubsamplingGraph(nn.Module):
    """ESPnet's Conv2dSubsampling (no positional encoding in a late-context encoder)."""

    def __init__(self, embed: nn.Module) -> None:
        super().__init__()
        self.embed = embed

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        out, _ = self.embed(feats, None)
        return out[0] if isinstance(out, tuple) else out


class LocalBlocksGraph(nn.Module):
    """All local blocks on one chunk, their depthwise-conv inputs and residuals as fixed-size state.

    Block ``b`` delays its input by ``right`` frames (its look-ahead), so its input frame
    t is utterance frame ``offset + t - b * right``. Depthwise-conv inputs of frames outside
    [0, limit) are zeroed: exactly the zero padding a whole utterance sees at both ends,
    which makes the stream equal the whole-utterance computation. ``limit`` is the number
    of frames so far when flushing (peek), else anything larger.
    """

    def __init__(self, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.blocks = blocks
        first = cast(Any, blocks[0])
        self.right = int(first.right_context)
        self.kernel = int(first.conv_module.kernel_size)
        self.residual_frames = max(self.right, 1)  # a right of 0 keeps one unused frame: no empty tensors

    def forward(
        self, x: torch.Tensor, offset: torch.Tensor, limit: torch.Tensor, gates: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        T = x.size(1)
        steps = torch.arange(T, device=x.device, dtype=torch.int64)
        skip = self.residual_frames - self.right
        new_gates, new_residual = [], []
        for b, block in enumerate(self.blocks):
            blk = cast(Any, block)
            r, g = blk.pre(x)
            index = offset + steps - b * self.right
            real = (index >= 0) & (index < limit)
            g = torch.where(real[None, :, None], g, torch.zeros_like(g))
            g_all = torch.cat([gates[b], g], 1)  # (1, K - 1 + T, D)
            r_all = torch.cat([residual[b], r], 1)  # (1, R + T, D)
            x = blk.post(r_all[:, skip : skip + T], blk.conv_module.depthwise(g_all))
            new_gates.append(g_all[:, T:])
            new_residual.append(r_all[:, T:])
        return x, torch.stack(new_gates), torch.stack(new_residual)


def div_term(d_model: int) -> torch.Tensor:
    """ESPnet's sinusoid frequencies, computed as its positional encodings compute them."""
    return torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))


def sinusoids(positions: torch.Tensor, div: torch.Tensor) -> torch.Tensor:
    """(P,) float positions -> (P, D) encodings, sin on even and cos on odd channels (ESPnet's layout).

    Computed in the graph instead of stored: the tables would be most of an int8 export's size."""
    angle = positions[:, None] * div[None, :]
    return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).flatten(1)


class AttentionGraph(nn.Module):
    """Positional encoding, the full self-attention blocks and the final norm, over all frames so far."""

    div: torch.Tensor

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        enc = cast(Any, encoder)
        self.blocks = enc.attention_blocks
        self.after_norm = enc.after_norm if enc.normalize_before else None
        self.xscale = float(enc.pos_enc.xscale)
        self.relative = type(enc.pos_enc).__name__ == "RelPositionalEncoding"
        self.register_buffer("div", div_term(enc.output_size()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.size(1)
        mask = torch.ones(1, 1, T, dtype=torch.bool, device=x.device)
        if self.relative:  # RelPositionalEncoding: relative positions T - 1 .. -(T - 1)
            positions = torch.arange(T - 1, -T, -1, device=x.device).float()
            xs: Any = (x * self.xscale, sinusoids(positions, self.div)[None])
        else:
            positions = torch.arange(T, device=x.device).float()
            xs = x * self.xscale + sinusoids(positions, self.div)[None]
        for layer in self.blocks:
            xs, mask = layer(xs, mask)
        out = xs[0] if isinstance(xs, tuple) else xs
        return self.after_norm(out) if self.after_norm is not None else out


class CtcGraph(nn.Module):
    def __init__(self, ctc: nn.Module) -> None:
        super().__init__()
        self.ctc = ctc

    def forward(self, enc: torch.Tensor) -> torch.Tensor:
        return cast(Any, self.ctc).log_softmax(enc)


def _session(decoder: nn.Module, src: list[tuple[torch.Tensor, torch.Tensor]]) -> KVCacheDecoderSession:
    """A KV-cache session over given source keys/values, so the graph runs pasu's own layer code."""
    session = KVCacheDecoderSession.__new__(KVCacheDecoderSession)
    session.dec = decoder
    session.layers = list(cast(Any, decoder).decoders)
    session.single = True
    session.src = src
    session.src_mask = None
    session.cache = None
    session._pending = None
    return session


class DecoderSourceGraph(nn.Module):
    """The encoder output projected once per utterance into every layer's source keys/values."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from pasu.decoding.kv_decoder import _heads

        ks, vs = [], []
        for layer in cast(Any, self.decoder).decoders:
            att = layer.src_attn
            ks.append(att.k_norm(_heads(att, enc, att.linear_k)))
            vs.append(_heads(att, enc, att.linear_v))
        return torch.stack(ks), torch.stack(vs)


class DecoderStepGraph(nn.Module):
    """One decoder step for N hypotheses: the newest token in, its log-probs and the grown cache out."""

    div: torch.Tensor

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        dec = cast(Any, decoder)
        self.register_buffer("div", div_term(dec.embed[0].embedding_dim))
        self.xscale = float(dec.embed[1].xscale)

    def forward(
        self,
        token: torch.Tensor,
        position: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        src_k: torch.Tensor,
        src_v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dec = cast(Any, self.decoder)
        layers = list(dec.decoders)
        session = _session(self.decoder, [(src_k[i], src_v[i]) for i in range(len(layers))])
        x = dec.embed[0](token[:, None]) * self.xscale + sinusoids(position.float(), self.div)[None]
        row_utt = torch.zeros(token.size(0), dtype=torch.int64)
        new_k, new_v = [], []
        for i in range(len(layers)):
            x, (ki, vi) = session._layer(i, x, row_utt, (k[i], v[i]), None)
            new_k.append(ki)
            new_v.append(vi)
        return session._logp(x[:, -1]), torch.stack(new_k), torch.stack(new_v)


class ConfidenceGraph(nn.Module):
    """The confidence estimator with its sigmoid: step features in, P(the answer is right) out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, features: torch.Tensor, sequence: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.net(features, sequence))
