"""The beam search's score sources on numpy and onnxruntime: CTC prefix scores, the decoder, a length bonus.

Numpy twins of :mod:`pasu.decoding.ctc` and :mod:`pasu.decoding.scorers`, behind the
same :class:`~pasu.decoding.interface.ScorerSession` interface, so pasu's one
:class:`~pasu.decoding.beam_search.BeamSearch` weighs them exactly as it weighs the
torch ones. Every array in and out is numpy: ``yseq`` (n, L) int64, ``row_utt`` (n,)
int64, ``candidates`` (n, K) int64 or None, scores (n, V) float32. The arithmetic
(float32 scores, the float64 closed-form CTC recursion) is the torch sessions' own,
which is what keeps the n-best lists identical.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pasu.decoding.interface import LOG_ZERO, EncoderBatch, Scorer, ScorerSession
from pasu.lite.decoder import DecoderState, LiteDecoder

log = logging.getLogger(__name__)

F32 = np.float32


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """log(sum(exp(x))) along ``axis``, as torch.logsumexp computes it (max shifted); x is finite."""
    m = x.max(axis=axis, keepdims=True)
    return np.squeeze(m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True)), axis=axis)


# -- CTC prefix scores ---------------------------------------------------------------------
@runtime_checkable
class PrefixHint(Protocol):
    """A prefix's CTC forward variables ``r`` (T, 2) and its log prefix probability ``psi``."""

    r: Any
    psi: float


class CTCPrefixScorer(Scorer):
    """CTC prefix scores (numpy) for the pre-beam candidates of each running hypothesis.

    ``log_probs(batch)`` gives the (B, T, V) CTC log-posteriors, padded frames certain blanks.
    """

    partial = True

    def __init__(
        self, log_probs: Callable[[EncoderBatch], np.ndarray], eos: int, blank: int = 0, recursion: str = "scan"
    ) -> None:
        if recursion not in ("scan", "loop"):
            raise ValueError(f"recursion must be 'scan' or 'loop', got {recursion!r}")
        self.log_probs = log_probs
        self.eos = eos
        self.blank = blank
        self.recursion = recursion

    def begin(self, batch: EncoderBatch, row_utt: Any) -> CTCPrefixSession:
        return CTCPrefixSession(
            self.log_probs(batch), np.asarray(batch.lengths), row_utt, self.eos, self.blank, self.recursion
        )


class CTCPrefixSession(ScorerSession):
    """Forward variables r (T, 2, rows) and prefix scores of the running hypotheses.

    The numpy twin of :class:`pasu.decoding.ctc.CTCPrefixSession`: psi of every
    candidate in one log-sum-exp over frames; r only for the rows that survive.
    """

    def __init__(
        self,
        logp: np.ndarray,
        lengths: np.ndarray,
        row_utt: Any,
        eos: int,
        blank: int = 0,
        recursion: str = "scan",
    ) -> None:
        logp = np.asarray(logp)
        if logp.ndim != 3:
            raise ValueError(f"CTC log-posteriors must be (B, T, V), got shape {logp.shape}")
        self.eos, self.blank, self.recursion = eos, blank, recursion
        self.logp_vt = np.ascontiguousarray(logp.transpose(0, 2, 1))  # (B, V, T): token rows gather fast
        self.n_frames = logp.shape[1]
        self.end_frames = np.asarray(lengths, dtype=np.int64) - 1
        self.row_utt = np.asarray(row_utt, dtype=np.int64)
        self.xb = logp[:, :, blank]  # (B, T)
        # The empty prefix: only blanks so far.
        r = np.full((self.n_frames, 2, self.row_utt.size), LOG_ZERO, dtype=logp.dtype)
        r[:, 1] = np.cumsum(self.xb, axis=1).T[:, self.row_utt]
        self.r = r
        self.s_prev: np.ndarray | float = 0.0
        self.last: np.ndarray | None = None  # last token of each row's prefix
        self.output_length = 0
        # filled by score(), consumed by advance()
        self._r_sum: np.ndarray | None = None
        self._log_psi: np.ndarray | None = None

    def _start(self) -> int:
        return min(max(self.output_length, 1), self.n_frames)

    def score(self, yseq, row_utt, candidates):
        T = self.n_frames
        n = yseq.shape[0]
        vocab = self.logp_vt.shape[1]
        self.output_length = yseq.shape[1] - 1
        last = np.asarray(yseq[:, -1], dtype=np.int64)
        self.last = last
        if candidates is None:  # score every token (ctc_weight == 1: no pre-beam)
            candidates = np.broadcast_to(np.arange(vocab, dtype=np.int64), (n, vocab))
        candidates = np.asarray(candidates, dtype=np.int64)
        r_prev = self.r
        r_sum = np.logaddexp(r_prev[:, 0], r_prev[:, 1])  # (T, n)
        # phi: probability of the prefix ending at t-1 in a state that may emit c;
        # a repeated label must pass through a blank.
        same = (candidates == last[:, None])[None]  # (1, n, K)
        log_phi = np.where(same, r_prev[:, 1][:, :, None], r_sum[:, :, None])  # (T, n, K)
        x_c = self.logp_vt[self.row_utt[:, None], candidates].transpose(2, 0, 1)  # (T, n, K)
        start = self._start()
        r_init = x_c[0] if self.output_length == 0 else np.full_like(x_c[0], LOG_ZERO)
        log_phi_x = np.concatenate((log_phi[:1], log_phi[:-1]), axis=0) + x_c
        log_psi_c = _logsumexp(np.concatenate((log_phi_x[start:T], r_init[None]), axis=0), axis=0)
        log_psi = np.full((n, vocab), LOG_ZERO, dtype=r_prev.dtype)
        np.put_along_axis(log_psi, candidates, log_psi_c, axis=1)
        log_psi[:, self.eos] = r_sum[self.end_frames[self.row_utt], np.arange(n)]
        if self.eos != self.blank:
            log_psi[:, self.blank] = LOG_ZERO
        self._r_sum, self._log_psi = r_sum, log_psi
        s_prev = self.s_prev[:, None] if isinstance(self.s_prev, np.ndarray) else self.s_prev
        return (log_psi - s_prev).astype(r_prev.dtype, copy=False)

    def advance(self, parents, tokens):
        assert self.last is not None and self._r_sum is not None and self._log_psi is not None, "advance before score"
        parents = np.asarray(parents, dtype=np.int64)
        tokens = np.asarray(tokens, dtype=np.int64)
        utt = self.row_utt[parents]
        same = (tokens == self.last[parents])[None]
        phi = np.where(same, self.r[:, 1][:, parents], self._r_sum[:, parents])  # (T, m)
        x_c = self.logp_vt[utt, tokens].T  # (T, m)
        x_b = self.xb[utt].T  # (T, m)
        self.r = self._recurse_loop(phi, x_c, x_b) if self.recursion == "loop" else self._recurse_scan(phi, x_c, x_b)
        self.s_prev = self._log_psi[parents, tokens]
        self.row_utt = utt
        self._r_sum = self._log_psi = None

    def prime(self, yseq, row_utt, hint=None):
        """Start from a known prefix; ``hint`` (a :class:`pasu.streaming.ctc_leap.PrefixForward`)
        may carry its forward variables ``r`` (T, 2) and log prefix probability ``psi`` (CTC leap);
        without it the prefix is replayed token by token."""
        if hint is None:
            return super().prime(yseq, row_utt, hint)
        if not isinstance(hint, PrefixHint):
            raise TypeError(f"a CTC hint needs .r and .psi, got {type(hint).__name__}")
        n = yseq.shape[0]
        r = np.asarray(hint.r).astype(self.logp_vt.dtype)
        if r.shape != (self.n_frames, 2):
            raise ValueError(f"prefix forward variables have shape {r.shape}, need ({self.n_frames}, 2)")
        self.r = np.repeat(r[:, :, None], n, axis=2)
        psi = np.full(n, float(hint.psi), dtype=self.logp_vt.dtype)
        self.s_prev = psi
        self.output_length = yseq.shape[1] - 1
        return psi.copy()

    def _recurse_loop(self, phi: np.ndarray, x_c: np.ndarray, x_b: np.ndarray) -> np.ndarray:
        """ESPnet's recursion, frame by frame, for the surviving rows only."""
        T, m = x_c.shape
        r = np.full((T, 2, m), LOG_ZERO, dtype=x_c.dtype)
        if self.output_length == 0:
            r[0, 0] = x_c[0]
        x = np.stack((x_c, x_b), axis=1)  # (T, 2, m)
        for t in range(self._start(), T):
            rn, rb = r[t - 1]
            r[t, 0] = np.logaddexp(rn, phi[t - 1]) + x[t, 0]
            r[t, 1] = np.logaddexp(rn, rb) + x[t, 1]
        return r

    def _recurse_scan(self, phi: np.ndarray, x_c: np.ndarray, x_b: np.ndarray) -> np.ndarray:
        """The same recursion in closed form (cumulative log-sum-exp), in float64."""
        T, m = x_c.shape
        start = self._start()
        out = np.full((T, 2, m), LOG_ZERO, dtype=x_c.dtype)
        a_init = x_c[0] if self.output_length == 0 else np.full_like(x_c[0], LOG_ZERO)
        out[start - 1, 0] = a_init
        if start >= T:
            return out
        f64 = np.float64
        a0 = a_init.astype(f64)
        # r^n_t = logaddexp(r^n_{t-1}, phi_{t-1}) + x_t(c)
        C = np.cumsum(x_c[start:].astype(f64), axis=0)  # C_t, t = start..T-1
        C_prev = np.concatenate((np.zeros_like(C[:1]), C[:-1]))  # C_{t-1}, with C_{start-1} = 0
        Z = np.logaddexp.accumulate(phi[start - 1 : T - 1].astype(f64) - C_prev, axis=0)
        a = C + np.logaddexp(a0[None], Z)  # (T - start, m)
        # r^b_t = logaddexp(r^n_{t-1}, r^b_{t-1}) + x_t(blank), r^b_{start-1} = log 0
        D = np.cumsum(x_b[start:].astype(f64), axis=0)
        D_prev = np.concatenate((np.zeros_like(D[:1]), D[:-1]))
        a_prev = np.concatenate((a0[None], a[:-1]))  # r^n_{t-1}
        b = D + np.logaddexp.accumulate(a_prev - D_prev, axis=0)
        out[start:, 0] = a
        out[start:, 1] = b
        return out


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
