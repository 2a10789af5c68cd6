"""ESPnet's ``lm`` scorer: shallow fusion with a language model trained by ``LMTask``.

The LM is one more full scorer: every step it scores every next token of the
running rows, and the search adds ``lm_weight`` times that. The arithmetic is
ESPnet's ``batch_score`` on the same tensors, so the n-best equals
``Speech2Text(lm_train_config=..., lm_file=..., lm_weight=w)``. What differs is
how the state is kept: ESPnet splits it into one Python object per hypothesis
after each step and stacks it back before the next; here it stays one batched
tensor per layer, and keeping the survivors is one ``index_select``:

* Transformer LM: each layer's outputs for the prefix, (rows, L-1, D) per layer,
  exactly what ESPnet's ``Encoder.forward_one_step`` caches;
* sequential RNN LM: the recurrent state, (layers, rows, D) — ``(h, c)`` for an LSTM;
* any other ``AbsLM``: ESPnet's own per-row states, selected row by row.
"""

from __future__ import annotations

from typing import Any

import torch

from pasu.decoding.interface import EncoderBatch, Scorer, ScorerSession


class LanguageModelScorer(Scorer):
    """An ESPnet ``AbsLM`` (``ESPnetLanguageModel.lm``) as a full scorer."""

    def __init__(self, lm: torch.nn.Module) -> None:
        if not hasattr(lm, "batch_score"):
            raise TypeError(f"{type(lm).__name__} has no batch_score; not an ESPnet LM")
        self.lm = lm

    def begin(self, batch: EncoderBatch, row_utt: torch.Tensor) -> ScorerSession:
        from espnet2.lm.seq_rnn_lm import SequentialRNNLM
        from espnet2.lm.transformer_lm import TransformerLM

        if type(self.lm) is TransformerLM:
            return TransformerLMSession(self.lm)
        if type(self.lm) is SequentialRNNLM:
            return RNNLMSession(self.lm)
        return GenericLMSession(self.lm, batch)


class TransformerLMSession(ScorerSession):
    """Per layer, the outputs at every prefix position but the newest, batched over rows."""

    def __init__(self, lm: Any) -> None:
        self.lm = lm
        self.cache: list[torch.Tensor] | None = None  # per layer (rows, L-1, D)
        self._pending: list[torch.Tensor] | None = None

    def score(self, yseq, row_utt, candidates):
        lm = self.lm
        # ESPnet's TransformerLM.batch_score, with the cache already one tensor per layer
        h, _, self._pending = lm.encoder.forward_one_step(lm.embed(yseq), lm._target_mask(yseq), cache=self.cache)
        return lm.decoder(h[:, -1]).log_softmax(dim=-1)

    def advance(self, parents, tokens):
        assert self._pending is not None, "advance before score"
        idx = parents.to(self._pending[0].device)
        self.cache = [c.index_select(0, idx) for c in self._pending]
        self._pending = None


class RNNLMSession(ScorerSession):
    """The recurrent state after the prefix, (layers, rows, D); a pair for an LSTM."""

    def __init__(self, lm: Any) -> None:
        self.lm = lm
        self.state: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None

    def score(self, yseq, row_utt, candidates):
        # ESPnet's SequentialRNNLM.batch_score: one step on the newest token
        out, self._pending = self.lm(yseq[:, -1:], self.state)
        return out.squeeze(1).log_softmax(dim=-1)

    def advance(self, parents, tokens):
        assert self._pending is not None, "advance before score"
        p = self._pending
        if isinstance(p, tuple):
            idx = parents.to(p[0].device)
            self.state = (p[0].index_select(1, idx), p[1].index_select(1, idx))
        else:
            self.state = p.index_select(1, parents.to(p.device))
        self._pending = None


class GenericLMSession(ScorerSession):
    """Any other ESPnet LM through its own ``batch_score``, with its per-row state list."""

    def __init__(self, lm: Any, batch: EncoderBatch) -> None:
        self.lm = lm
        self.enc = batch.enc
        self.states: list[Any] | None = None
        self._pending: list[Any] | None = None

    def score(self, yseq, row_utt, candidates):
        states = self.states if self.states is not None else [None] * yseq.size(0)
        xs = self.enc.index_select(0, row_utt.to(self.enc.device))
        logp, self._pending = self.lm.batch_score(yseq, states, xs)
        return logp

    def advance(self, parents, tokens):
        assert self._pending is not None, "advance before score"
        pending = self._pending
        self.states = [pending[int(p)] for p in parents]
        self._pending = None
