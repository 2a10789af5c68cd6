"""Score sources for the beam search, each behind one tiny interface.

As in ESPnet, every score source is a scorer and the beam search only weighs
them. Unlike ESPnet, a scorer object holds no per-utterance state: ``begin``
returns a :class:`ScorerSession` that owns the state of one search (the
decoder's kv-cache, the CTC forward variables), so one model can serve many
concurrent searches, and a pilot's session can be handed on to the next pilot.

The rows a session sees are the *running hypotheses* of all utterances in the
batch, compacted: ``EncoderBatch.row_utt`` says which utterance a row belongs
to. After the search picks the survivors it calls ``advance(parents, tokens)``
and the session keeps only the state of those rows, in that order.
"""

from __future__ import annotations

import torch

from pasu.decoding.interface import LOG_ZERO, EncoderBatch, Scorer, ScorerSession
from pasu.decoding.kv_decoder import KVCacheDecoderSession, supports

__all__ = [
    "LOG_ZERO",
    "AttentionDecoderScorer",
    "EncoderBatch",
    "LengthBonus",
    "Scorer",
    "ScorerSession",
    "kv_cache_supported",
]


class LengthBonus(Scorer):
    """+1 per token (weighted by ``penalty``), as ESPnet's ``LengthBonus``."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def begin(self, batch: EncoderBatch, row_utt: torch.Tensor) -> ScorerSession:
        return _LengthBonusSession(self.vocab_size, batch.enc)


class _LengthBonusSession(ScorerSession):
    def __init__(self, vocab_size: int, like: torch.Tensor) -> None:
        self._one = torch.ones(1, dtype=like.dtype, device=like.device)
        self.vocab_size = vocab_size

    def score(self, yseq, row_utt, candidates):
        return self._one.expand(yseq.size(0), self.vocab_size)

    def advance(self, parents, tokens):
        pass

    def prime(self, yseq, row_utt, hint=None):
        return torch.full((yseq.size(0),), float(yseq.size(1) - 1), dtype=self._one.dtype)


class AttentionDecoderScorer(Scorer):
    """An ESPnet Transformer-style decoder, run one step at a time with a kv-cache.

    Works with any decoder that has ESPnet's ``forward_one_step(tgt, tgt_mask,
    memory, memory_mask, cache=...)`` (Transformer and its variants). The cache
    is one (rows, L, D) tensor per layer, kept batched: selecting survivors is
    one ``index_select`` per layer, not a Python loop over hypotheses.
    """

    def __init__(self, decoder: torch.nn.Module, kv_cache: bool = True) -> None:
        if not hasattr(decoder, "forward_one_step"):
            raise TypeError(f"{type(decoder).__name__} has no forward_one_step; not supported")
        self.decoder = decoder
        self.kv_cache = kv_cache and kv_cache_supported(decoder)

    def begin(self, batch: EncoderBatch, row_utt: torch.Tensor) -> ScorerSession:
        if self.kv_cache:
            return KVCacheDecoderSession(self.decoder, batch)
        return _DecoderSession(self.decoder, batch)


def kv_cache_supported(decoder: torch.nn.Module) -> bool:
    """Whether :mod:`pasu.decoding.kv_decoder` can run this decoder step by step."""
    return supports(decoder)


class _DecoderSession(ScorerSession):
    def __init__(self, decoder: torch.nn.Module, batch: EncoderBatch) -> None:
        from espnet2.legacy.nets.pytorch_backend.transformer.mask import subsequent_mask

        self.decoder = decoder
        self.batch = batch
        self._subsequent_mask = subsequent_mask
        self.cache: list[torch.Tensor] | None = None
        self._pending: list[torch.Tensor] | None = None
        if batch.padded:
            t = torch.arange(batch.enc.size(1))
            self._mem_mask = (t[None, :] < batch.lengths[:, None]).unsqueeze(1).to(batch.enc.device)
        else:
            self._mem_mask = None

    def _memory(self, row_utt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        enc = self.batch.enc
        n = row_utt.numel()
        if enc.size(0) == 1:  # a stride-0 view, as ESPnet does for one utterance
            memory = enc.expand(n, *enc.shape[1:])
            mask = None if self._mem_mask is None else self._mem_mask.expand(n, -1, -1)
            return memory, mask
        idx = row_utt.to(enc.device)
        mask = None if self._mem_mask is None else self._mem_mask.index_select(0, idx)
        return enc.index_select(0, idx), mask

    def score(self, yseq, row_utt, candidates):
        memory, memory_mask = self._memory(row_utt)
        ys_mask = self._subsequent_mask(yseq.size(-1), device=str(memory.device)).unsqueeze(0)
        logp, self._pending = self.decoder.forward_one_step(yseq, ys_mask, memory, memory_mask, cache=self.cache)
        return logp

    def advance(self, parents, tokens):
        assert self._pending is not None, "advance before score"
        idx = parents.to(self.batch.enc.device)
        self.cache = [c.index_select(0, idx) for c in self._pending]
        self._pending = None
