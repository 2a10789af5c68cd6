"""The scorer interface: what the beam search weighs, and the state of one search.

Kept apart from the scorers themselves so that each implementation
(:mod:`pasu.decoding.scorers`, :mod:`pasu.decoding.kv_decoder`,
:mod:`pasu.decoding.ctc`) imports only this, never another implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from pasu.decoding.arrays import ops_for

LOG_ZERO = -1.0e10  # ESPnet's log(0): finite so arithmetic stays well defined


@dataclass
class EncoderBatch:
    """Encoder output for a batch of utterances, padded to the longest.

    Torch tensors on the torch runtime, numpy arrays on :mod:`pasu.lite`: the search
    and the sessions read it through :mod:`pasu.decoding.arrays`.
    """

    enc: Any  # (B, T, D)
    lengths: Any  # (B,) int64, on the CPU

    @property
    def n_utt(self) -> int:
        return int(self.enc.shape[0])

    @property
    def padded(self) -> bool:
        return bool((self.lengths < self.enc.shape[1]).any())


class ScorerSession(ABC):
    """The state of one scorer in one search."""

    @abstractmethod
    def score(self, yseq: Any, row_utt: Any, candidates: Any | None) -> Any:
        """Scores (rows, vocab) of every next token given the prefixes ``yseq`` (rows, L).

        ``candidates`` (rows, K) are the only tokens a partial scorer must
        score (others get :data:`LOG_ZERO`); full scorers ignore it.
        """

    @abstractmethod
    def advance(self, parents: Any, tokens: Any) -> None:
        """Keep the state of the hypotheses ``parents[i] + tokens[i]`` (after ``score``)."""

    def prime(self, yseq: Any, row_utt: Any, hint: object = None) -> Any:
        """Consume a whole known prefix ``yseq`` (rows, 1 + U) at once; its summed scores (rows,).

        A seeded search (beam collapse) starts from an agreed prefix instead of
        ``<sos>``. The default replays it one token at a time; scorers that can
        do better (a decoder run over all positions in parallel, CTC forward
        variables carried over from a pilot via ``hint``) override it.
        """
        xp = ops_for(yseq)
        n = yseq.shape[0]
        total = xp.to_host(xp.zeros(n, like=yseq, dtype="float32"))
        rows = xp.arange(n)
        for u in range(1, yseq.shape[1]):
            tok = yseq[:, u]
            s = self.score(yseq[:, :u], row_utt, tok[:, None])
            total = total + xp.to_host(xp.take_along_rows(s, tok))
            self.advance(rows, xp.to_host(tok))
        return total


class Scorer(ABC):
    """A score source bound to a model; stateless, so it may be shared."""

    #: partial scorers only score the pre-beam candidates (CTC); full ones score all tokens
    partial: bool = False

    @abstractmethod
    def begin(self, batch: EncoderBatch, row_utt: Any) -> ScorerSession:
        """Start a search whose initial rows belong to utterances ``row_utt``."""
