"""CTC prefix scores from a torch model's CTC head: the scorer the torch runtime's search weighs.

The session — the prefix scoring itself, the same for torch and for numpy — is
:mod:`pasu.decoding.ctc_prefix`; this scorer gives it the head's log-posteriors.
"""

from __future__ import annotations

import torch

from pasu.decoding.ctc_prefix import CTCPrefixSession, PrefixHint
from pasu.decoding.scorers import LOG_ZERO, EncoderBatch, Scorer

__all__ = ["CTCPrefixScorer", "CTCPrefixSession", "PrefixHint"]


class CTCPrefixScorer(Scorer):
    """CTC prefix scores for the pre-beam candidates of each running hypothesis."""

    partial = True

    def __init__(self, ctc: torch.nn.Module, eos: int, blank: int = 0, recursion: str = "scan") -> None:
        self.ctc = ctc
        self.eos = eos
        self.blank = blank
        self.recursion = recursion

    def log_probs(self, batch: EncoderBatch) -> torch.Tensor:
        """(B, T, V) CTC log-posteriors; padded frames are certain blanks, as in ESPnet."""
        logp = self.ctc.log_softmax(batch.enc)
        for b, n in enumerate(batch.lengths.tolist()):
            if n < logp.size(1):
                logp[b, n:, :] = LOG_ZERO
                logp[b, n:, self.blank] = 0.0
        return logp

    def begin(self, batch: EncoderBatch, row_utt: torch.Tensor) -> CTCPrefixSession:
        return CTCPrefixSession(self.log_probs(batch), batch.lengths, row_utt, self.eos, self.blank, self.recursion)
