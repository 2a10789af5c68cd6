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

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

LOG_ZERO = -1.0e10  # ESPnet's log(0): finite so arithmetic stays well defined


@dataclass
class EncoderBatch:
    """Encoder output for a batch of utterances, padded to the longest."""

    enc: torch.Tensor  # (B, T, D)
    lengths: torch.Tensor  # (B,) int64, on the CPU

    @property
    def n_utt(self) -> int:
        return int(self.enc.size(0))

    @property
    def padded(self) -> bool:
        return bool((self.lengths < self.enc.size(1)).any())


class ScorerSession(ABC):
    """The state of one scorer in one search."""

    @abstractmethod
    def score(
        self, yseq: torch.Tensor, row_utt: torch.Tensor, candidates: torch.Tensor | None
    ) -> torch.Tensor:
        """Scores (rows, vocab) of every next token given the prefixes ``yseq`` (rows, L).

        ``candidates`` (rows, K) are the only tokens a partial scorer must
        score (others get :data:`LOG_ZERO`); full scorers ignore it.
        """

    @abstractmethod
    def advance(self, parents: torch.Tensor, tokens: torch.Tensor) -> None:
        """Keep the state of the hypotheses ``parents[i] + tokens[i]`` (after ``score``)."""

    def prime(self, yseq: torch.Tensor, row_utt: torch.Tensor, hint: object = None) -> torch.Tensor:
        """Consume a whole known prefix ``yseq`` (rows, 1 + U) at once; its summed scores (rows,).

        A seeded search (beam collapse) starts from an agreed prefix instead of
        ``<sos>``. The default replays it one token at a time; scorers that can
        do better (a decoder run over all positions in parallel, CTC forward
        variables carried over from a pilot via ``hint``) override it.
        """
        total = torch.zeros(yseq.size(0), dtype=torch.float32, device=yseq.device)
        rows = torch.arange(yseq.size(0))
        for u in range(1, yseq.size(1)):
            tok = yseq[:, u]
            s = self.score(yseq[:, :u], row_utt, tok.unsqueeze(1))
            total = total + s.gather(1, tok.unsqueeze(1).to(s.device)).squeeze(1).to(total.device)
            self.advance(rows, tok.cpu())
        return total


class Scorer(ABC):
    """A score source bound to a model; stateless, so it may be shared."""

    #: partial scorers only score the pre-beam candidates (CTC); full ones score all tokens
    partial: bool = False

    @abstractmethod
    def begin(self, batch: EncoderBatch, row_utt: torch.Tensor) -> ScorerSession:
        """Start a search whose initial rows belong to utterances ``row_utt``."""


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
            from pasu.decoding.kv_decoder import KVCacheDecoderSession

            return KVCacheDecoderSession(self.decoder, batch)
        return _DecoderSession(self.decoder, batch)


def kv_cache_supported(decoder: torch.nn.Module) -> bool:
    """Whether :mod:`pasu.decoding.kv_decoder` can run this decoder step by step."""
    from pasu.decoding.kv_decoder import supports

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
        ys_mask = self._subsequent_mask(yseq.size(-1), device=memory.device).unsqueeze(0)
        logp, self._pending = self.decoder.forward_one_step(
            yseq, ys_mask, memory, memory_mask, cache=self.cache
        )
        return logp

    def advance(self, parents, tokens):
        idx = parents.to(self.batch.enc.device)
        self.cache = [c.index_select(0, idx) for c in self._pending]
        self._pending = None
