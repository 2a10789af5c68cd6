"""The scorer interface: what the beam search weighs, and the state of one search.

Kept apart from the scorers themselves so that each implementation
(:mod:`pasu.decoding.scorers`, :mod:`pasu.decoding.kv_decoder`,
:mod:`pasu.decoding.ctc`) imports only this, never another implementation.
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
    def score(self, yseq: torch.Tensor, row_utt: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
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
