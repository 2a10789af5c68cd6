"""The beam search's score sources on numpy and onnxruntime: CTC prefix scores, the decoder, a length bonus.

The torch runtime's scorers (:mod:`pasu.decoding.ctc`, :mod:`pasu.decoding.scorers`) fed
by exported graphs instead of torch modules, behind the same
:class:`~pasu.decoding.interface.ScorerSession` interface, so pasu's one
:class:`~pasu.decoding.beam_search.BeamSearch` weighs them exactly as it weighs the
torch ones; the CTC prefix session is the very same class. Every array in and out is
numpy: ``yseq`` (n, L) int64, ``row_utt`` (n,) int64, ``candidates`` (n, K) int64 or
None, scores (n, V) float32. The arithmetic (float32 scores, the float64 closed-form
CTC recursion) is the torch sessions', which is what keeps the n-best lists identical.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pasu.decoding.ctc_prefix import RECURSIONS, CTCPrefixSession
from pasu.decoding.interface import EncoderBatch, Scorer, ScorerSession
from pasu.lite.decoder import DecoderState, LiteDecoder

log = logging.getLogger(__name__)

F32 = np.float32


# -- CTC prefix scores ---------------------------------------------------------------------
class CTCPrefixScorer(Scorer):
    """CTC prefix scores (numpy) for the pre-beam candidates of each running hypothesis.

    ``log_probs(batch)`` gives the (B, T, V) CTC log-posteriors, padded frames certain
    blanks; the session is the torch runtime's own (:mod:`pasu.decoding.ctc_prefix`).
    """

    partial = True

    def __init__(
        self, log_probs: Callable[[EncoderBatch], np.ndarray], eos: int, blank: int = 0, recursion: str = "scan"
    ) -> None:
        if recursion not in RECURSIONS:
            raise ValueError(f"recursion must be 'scan' or 'loop', got {recursion!r}")
        self.log_probs = log_probs
        self.eos = eos
        self.blank = blank
        self.recursion = recursion

    def begin(self, batch: EncoderBatch, row_utt: Any) -> CTCPrefixSession:
        return CTCPrefixSession(
            np.asarray(self.log_probs(batch)), np.asarray(batch.lengths), row_utt, self.eos, self.blank, self.recursion
        )


# -- the attention decoder -----------------------------------------------------------------
@dataclass
class PrefixPass:
    """The decoder teacher-forced over ``<sos>`` + ``tokens`` on one utterance's encoder output.

    ``logp`` (U, V): row u is log p(tokens[u] | <sos>, tokens[:u]); ``state`` holds the
    keys/values of positions ``<sos>`` .. tokens[U-2] (one row), what a search that
    starts from the prefix (or a prefix of it) continues from. ``enc`` is the encoder
    output it was computed on: a session takes the pass only for that same array.
    """

    logp: np.ndarray
    tokens: list[int]
    state: DecoderState
    enc: np.ndarray


def prefix_pass(decoder: LiteDecoder, enc: np.ndarray, prefix: list[int], batch_enc: np.ndarray) -> PrefixPass:
    """Step ``decoder`` over ``<sos>`` + ``prefix`` on ``enc`` (T, D): one graph call per token."""
    state = decoder.begin(enc, rows=1)
    inputs = [decoder.sos, *prefix[:-1]]
    rows = []
    for u, tok in enumerate(inputs[: len(prefix)]):
        logp, state = decoder.step(state, np.array([tok], dtype=np.int64), u)
        rows.append(logp[0])
    vocab = len(decoder.model.tokens)
    logp = np.stack(rows) if rows else np.zeros((0, vocab), dtype=F32)
    return PrefixPass(logp=logp, tokens=list(prefix), state=state, enc=batch_enc)


class LiteDecoderScorer(Scorer):
    """The attention decoder's ``decoder_step`` graph: one call per search step for all rows of an utterance."""

    def __init__(self, decoder: LiteDecoder) -> None:
        self.decoder = decoder

    def begin(self, batch: EncoderBatch, row_utt: Any) -> LiteDecoderSession:
        return LiteDecoderSession(self.decoder, batch, np.asarray(row_utt, dtype=np.int64))


class LiteDecoderSession(ScorerSession):
    """Self-attention keys/values of the running rows (a :class:`DecoderState`); source keys/values per utterance.

    The ``decoder_step`` graph takes one utterance's source keys/values, so a batch of
    several utterances costs one call per utterance per step; streaming decodes one.
    """

    def __init__(self, decoder: LiteDecoder, batch: EncoderBatch, row_utt: np.ndarray) -> None:
        self.dec = decoder
        self.enc = batch.enc
        self.lengths = np.asarray(batch.lengths, dtype=np.int64)
        self._sources: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # utterance -> (src_k, src_v), lazily
        d = decoder
        empty = np.zeros((d.layers, row_utt.size, d.heads, 0, d.d_k), dtype=F32)
        self.k, self.v = empty, empty.copy()
        self._pending: DecoderState | None = None

    def _source(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        if b not in self._sources:
            st = self.dec.begin(self.enc[b, : int(self.lengths[b])], rows=0)
            self._sources[b] = (st.src_k, st.src_v)
        return self._sources[b]

    def _step(self, tokens: np.ndarray, row_utt: np.ndarray, position: int) -> tuple[np.ndarray, DecoderState]:
        """Log-probs (n, V) after ``tokens`` at ``position``, and the rows' grown cache."""
        utts = np.unique(row_utt)
        if utts.size == 1:
            src_k, src_v = self._source(int(utts[0]))
            return self.dec.step(DecoderState(src_k, src_v, self.k, self.v), tokens, position)
        n = tokens.size
        logp: np.ndarray | None = None
        k = np.empty((*self.k.shape[:3], self.k.shape[3] + 1, self.k.shape[4]), dtype=self.k.dtype)
        v = np.empty_like(k)
        for b in utts.tolist():
            idx = np.flatnonzero(row_utt == b)
            src_k, src_v = self._source(b)
            lp, st = self.dec.step(DecoderState(src_k, src_v, self.k[:, idx], self.v[:, idx]), tokens[idx], position)
            if logp is None:
                logp = np.empty((n, lp.shape[1]), dtype=lp.dtype)
            logp[idx], k[:, idx], v[:, idx] = lp, st.k, st.v
        assert logp is not None
        src_k, src_v = self._source(int(utts[0]))
        return logp, DecoderState(src_k, src_v, k, v)

    def score(self, yseq, row_utt, candidates):
        tokens = np.ascontiguousarray(yseq[:, -1], dtype=np.int64)
        logp, self._pending = self._step(tokens, np.asarray(row_utt, dtype=np.int64), yseq.shape[1] - 1)
        return logp

    def advance(self, parents, tokens):
        assert self._pending is not None, "advance before score"
        kept = self._pending.reorder(np.asarray(parents, dtype=np.int64))
        self.k, self.v = kept.k, kept.v
        self._pending = None

    def prime(self, yseq, row_utt, hint=None):
        """Start from a known prefix: the keys/values and log-probs of ``hint`` (a :class:`PrefixPass`
        over this prefix or a longer one, on this encoder output), else the prefix stepped through."""
        n, L = yseq.shape
        if L == 1:
            return np.zeros(n, dtype=F32)
        row_utt = np.asarray(row_utt, dtype=np.int64)
        if self._usable(hint, yseq, row_utt):
            assert isinstance(hint, PrefixPass)
            st = hint.state
            self._sources.setdefault(int(row_utt[0]), (st.src_k, st.src_v))
            self.k = np.repeat(st.k[:, :, :, : L - 1], n, axis=1)
            self.v = np.repeat(st.v[:, :, :, : L - 1], n, axis=1)
            picked = hint.logp[np.arange(L - 1), yseq[0, 1:]]
            return np.full(n, picked.sum(dtype=F32), dtype=F32)
        if hint is not None:
            log.debug("decoder hint does not fit this search; stepping the prefix")
        total = np.zeros(n, dtype=F32)
        rows = np.arange(n)
        for u in range(L - 1):
            logp, state = self._step(np.ascontiguousarray(yseq[:, u], dtype=np.int64), row_utt, u)
            self.k, self.v = state.k, state.v
            total = total + logp[rows, yseq[:, u + 1]]
        return total

    def _usable(self, hint: object, yseq: np.ndarray, row_utt: np.ndarray) -> bool:
        if not isinstance(hint, PrefixPass) or hint.enc is not self.enc:
            return False
        L = yseq.shape[1]
        if hint.logp.shape[0] < L - 1 or np.unique(row_utt).size != 1:
            return False
        return bool((yseq[:, 1:] == np.asarray(hint.tokens[: L - 1], dtype=np.int64)[None]).all())


# -- length bonus --------------------------------------------------------------------------
class LengthBonus(Scorer):
    """+1 per token (weighted by ``penalty``), as ESPnet's ``LengthBonus``."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def begin(self, batch: EncoderBatch, row_utt: Any) -> ScorerSession:
        return _LengthBonusSession(self.vocab_size, np.asarray(batch.enc).dtype)


class _LengthBonusSession(ScorerSession):
    def __init__(self, vocab_size: int, dtype: np.dtype) -> None:
        self._one = np.ones(1, dtype=dtype)
        self.vocab_size = vocab_size

    def score(self, yseq, row_utt, candidates):
        return np.broadcast_to(self._one, (yseq.shape[0], self.vocab_size))

    def advance(self, parents, tokens):
        pass

    def prime(self, yseq, row_utt, hint=None):
        return np.full(yseq.shape[0], float(yseq.shape[1] - 1), dtype=self._one.dtype)
