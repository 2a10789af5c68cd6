"""One decoder step with a real key/value cache, for ESPnet's Transformer decoder.

ESPnet's ``forward_one_step`` caches each layer's *output* and, every step,
re-embeds the whole prefix, re-projects every cached position into keys and
values, and re-projects the encoder output into source-attention keys and
values once per hypothesis. Here each position is projected once, when it is
new, and the encoder output once per utterance, shared by all its hypotheses —
the same arithmetic on the same numbers, just not repeated, so the scores
equal ESPnet's up to float rounding. Anything that is not the plain
Transformer layout falls back to ``forward_one_step``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch

from pasu.decoding.interface import EncoderBatch, ScorerSession


def supports(decoder: torch.nn.Module) -> bool:
    from espnet2.legacy.nets.pytorch_backend.transformer.attention import MultiHeadedAttention
    from espnet2.legacy.nets.pytorch_backend.transformer.decoder_layer import DecoderLayer
    from espnet2.legacy.nets.pytorch_backend.transformer.embedding import PositionalEncoding

    layers = getattr(decoder, "decoders", None)
    embed = getattr(decoder, "embed", None)
    if layers is None or not isinstance(embed, torch.nn.Sequential) or len(embed) != 2:
        return False
    if not isinstance(embed[0], torch.nn.Embedding) or type(embed[1]) is not PositionalEncoding:
        return False
    for layer in layers:
        if type(layer) is not DecoderLayer or layer.concat_after:
            return False
        for att in (layer.self_attn, layer.src_attn):
            if type(att) is not MultiHeadedAttention or getattr(att, "use_sdpa", False) or att.use_flash_attn:
                return False
    return getattr(decoder, "output_layer", None) is not None


def _heads(att, x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    """(n, L, D) -> (n, h, L, d_k)"""
    return linear(x).view(x.size(0), -1, att.h, att.d_k).transpose(1, 2)


def _attend(att, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """ESPnet's ``MultiHeadedAttention.forward_attention`` for projected q, k, v."""
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(att.d_k)
    if mask is not None:
        m = mask.unsqueeze(1).eq(0)
        scores = scores.masked_fill(m, torch.finfo(scores.dtype).min)
        p = torch.softmax(scores, dim=-1).masked_fill(m, 0.0)
    else:
        p = torch.softmax(scores, dim=-1)
    x = torch.matmul(p, v)
    n = x.size(0)
    return att.linear_out(x.transpose(1, 2).contiguous().view(n, -1, att.h * att.d_k))


@dataclass
class TeacherForced:
    """One utterance's teacher-forced decoder pass over a prefix: its (U, V) log-probabilities
    (row u: the prefix's token u given those before) and each layer's (1, h, U, d_k) keys/values
    (positions ``<sos>`` .. token U-1), for a search that starts from the prefix or its start."""

    logp: torch.Tensor
    cache: list[tuple[torch.Tensor, torch.Tensor]]


class KVCacheDecoderSession(ScorerSession):
    """Self-attention keys/values per layer for the running rows; source keys/values per utterance."""

    def __init__(self, decoder: torch.nn.Module, batch: EncoderBatch) -> None:
        self.dec = decoder
        self.layers: list[Any] = list(decoder.decoders)  # type: ignore[arg-type]  # an ESPnet ModuleList
        enc = batch.enc
        self.single = enc.size(0) == 1
        self.src: list[tuple[torch.Tensor, torch.Tensor]] = []
        for layer in self.layers:
            att = layer.src_attn
            self.src.append((att.k_norm(_heads(att, enc, att.linear_k)), _heads(att, enc, att.linear_v)))
        if batch.padded:
            t = torch.arange(enc.size(1))
            self.src_mask = (t[None, :] < batch.lengths[:, None]).unsqueeze(1).to(enc.device)  # (B, 1, T)
        else:
            self.src_mask = None
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _source(self, i: int, row_utt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        k, v = self.src[i]
        mask = self.src_mask
        if not self.single:
            idx = row_utt.to(k.device)
            k, v = k.index_select(0, idx), v.index_select(0, idx)
            mask = None if mask is None else mask.index_select(0, idx)
        return k, v, mask  # one utterance: (1, h, T, d_k) broadcasts over the rows

    def _layer(self, i: int, x: torch.Tensor, row_utt: torch.Tensor, past, self_mask):
        """One decoder layer for the positions in ``x``; returns its output and the layer's keys/values."""
        layer = self.layers[i]
        sa, ca = layer.self_attn, layer.src_attn
        residual = x
        h = layer.norm1(x) if layer.normalize_before else x
        q = sa.q_norm(_heads(sa, h, sa.linear_q))
        k, v = sa.k_norm(_heads(sa, h, sa.linear_k)), _heads(sa, h, sa.linear_v)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        x = residual + _attend(sa, q, k, v, self_mask)
        if not layer.normalize_before:
            x = layer.norm1(x)
        residual = x
        h = layer.norm2(x) if layer.normalize_before else x
        sk, sv, smask = self._source(i, row_utt)
        x = residual + _attend(ca, ca.q_norm(_heads(ca, h, ca.linear_q)), sk, sv, smask)
        if not layer.normalize_before:
            x = layer.norm2(x)
        residual = x
        h = layer.norm3(x) if layer.normalize_before else x
        x = residual + layer.feed_forward(h)
        if not layer.normalize_before:
            x = layer.norm3(x)
        return x, (k, v)

    def _logp(self, x: torch.Tensor) -> torch.Tensor:
        dec = self.dec
        y = dec.after_norm(x) if dec.normalize_before else x
        return torch.log_softmax(dec.output_layer(y), dim=-1)

    def score(self, yseq, row_utt, candidates):
        emb, pos_enc = self.dec.embed[0], cast(Any, self.dec.embed[1])
        pos = yseq.size(1) - 1
        x = emb(yseq[:, -1:]) * pos_enc.xscale + pos_enc.pe[:, pos : pos + 1]
        pending = []
        for i in range(len(self.layers)):
            # the newest position may see every earlier one: no self-attention mask
            x, kv = self._layer(i, x, row_utt, None if self.cache is None else self.cache[i], None)
            pending.append(kv)
        self._pending = pending
        return self._logp(x[:, -1])

    def prime(self, yseq, row_utt, hint=None):
        """Teacher-force the prefix through the decoder in one parallel pass (causal mask).

        ``hint`` may be a :class:`TeacherForced` pass over the same prefix (or a longer one
        it starts with) on the same encoder output, e.g. beam collapse's confirmation:
        its keys/values and log-probabilities are taken instead of a second pass.
        """
        n, L = yseq.shape
        if L == 1:
            return torch.zeros(n)
        if isinstance(hint, TeacherForced) and hint.logp.size(0) >= L - 1:
            self.cache = [
                (k[:, :, : L - 1].expand(n, -1, -1, -1), v[:, :, : L - 1].expand(n, -1, -1, -1)) for k, v in hint.cache
            ]
            logp = hint.logp[: L - 1].unsqueeze(0).expand(n, -1, -1)
        else:
            logp = self.teacher_forced(yseq, row_utt)
        return logp.gather(2, yseq[:, 1:].unsqueeze(2)).squeeze(2).sum(1)

    def teacher_forced(self, yseq: torch.Tensor, row_utt: torch.Tensor) -> torch.Tensor:
        """(n, L-1, V) log p(y_u | y_<u) of every position of ``yseq`` (n, L), in one parallel pass.

        Leaves the session primed with the prefix: the next ``score`` continues after it.
        """
        L = yseq.size(1)
        x = self.dec.embed(yseq)  # all positions: embedding + positional encoding
        causal = torch.tril(torch.ones(L, L, dtype=torch.bool, device=x.device)).unsqueeze(0)
        cache = []
        for i in range(len(self.layers)):
            x, (k, v) = self._layer(i, x, row_utt, None, causal)
            cache.append((k[:, :, :-1], v[:, :, :-1]))  # the last position is recomputed by score()
        self.cache = cache
        return self._logp(x[:, :-1])

    def advance(self, parents, tokens):
        assert self._pending is not None, "advance before score"
        idx = parents.to(self._pending[0][0].device)
        self.cache = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in self._pending]
        self._pending = None
