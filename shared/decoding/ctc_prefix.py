"""CTC prefix scoring (Watanabe et al. 2017, Alg. 2), vectorized and computed lazily.

One session for both runtimes: torch tensors (:mod:`pasu.decoding.ctc`, the
model's CTC head) or numpy arrays (:mod:`pasu.lite`, an exported graph's
log-posteriors), through :mod:`pasu.decoding.arrays`, so this module imports no
torch. Each array library keeps its own primitives (log-sum-exp, the running
log-sum-exp), which is what keeps the torch side ESPnet-exact and the numpy
side's n-best the torch side's.

ESPnet's ``CTCPrefixScoreTH`` runs the forward recursion over every frame for
every (hypothesis, pre-beam candidate) pair — a Python loop of T iterations,
each on a (2, 2, hyps, candidates) tensor — and then keeps only the ``beam``
pairs that survive. Two observations make it cheaper at identical output:

1. The prefix probability psi(h + c) needs no recursion at all:
   psi = r^n_{start-1}(h + c) + sum_t phi_{t-1}(h, c) * x_t(c), one log-sum-exp
   over frames for all candidates at once (exactly the expression ESPnet uses).
2. The forward variables r^n, r^b are only needed for the hypotheses that
   survive the beam, so they are computed after pruning, for ``beam`` rows
   instead of ``beam * pre_beam``. With ``recursion="scan"`` the recursion
   itself becomes closed form: r^n_t = C_t + logcumsumexp_s(phi_s - C_s), with C
   the cumulative log-probability of the token (float64, so the subtraction of
   large cumulative sums loses nothing that matters); likewise r^b. A handful of
   array ops per step instead of a few per frame.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pasu.decoding.arrays import ops_for
from pasu.decoding.interface import LOG_ZERO, ScorerSession

RECURSIONS = ("scan", "loop")


@runtime_checkable
class PrefixHint(Protocol):
    """A prefix's CTC forward variables ``r`` (T, 2; numpy or torch) and its log prefix probability ``psi``."""

    r: Any
    psi: float


class CTCPrefixSession(ScorerSession):
    """Forward variables r (T, 2, rows) and prefix scores of the running hypotheses.

    ``logp`` (B, T, V): the CTC log-posteriors, padded frames certain blanks; its
    library (torch or numpy) is the session's, and ``yseq``, ``row_utt``,
    ``candidates``, ``parents`` and ``tokens`` come in that library's arrays.
    """

    def __init__(self, logp: Any, lengths: Any, row_utt: Any, eos: int, blank: int = 0, recursion: str = "scan"):
        if recursion not in RECURSIONS:
            raise ValueError(f"recursion must be 'scan' or 'loop', got {recursion!r}")
        if len(logp.shape) != 3:
            raise ValueError(f"CTC log-posteriors must be (B, T, V), got shape {tuple(logp.shape)}")
        self.xp = xp = ops_for(logp)
        self.eos, self.blank, self.recursion = eos, blank, recursion
        self.logp_vt = xp.contiguous(xp.permute(logp, (0, 2, 1)))  # (B, V, T): token rows gather fast
        self.n_frames = int(logp.shape[1])
        self.end_frames = xp.index(lengths, like=logp) - 1
        self.row_utt = xp.index(row_utt, like=logp)
        self.xb = logp[:, :, blank]  # (B, T)
        # The empty prefix: only blanks so far.
        r = xp.full((self.n_frames, 2, int(self.row_utt.shape[0])), LOG_ZERO, like=logp)
        r[:, 1] = xp.cumsum(self.xb.T)[:, self.row_utt]
        self.r = r
        self.s_prev: Any = 0.0
        self.last: Any = None  # last token of each row's prefix
        self.output_length = 0
        # filled by score(), consumed by advance()
        self._r_sum: Any = None
        self._log_psi: Any = None

    def _start(self) -> int:
        return min(max(self.output_length, 1), self.n_frames)

    def score(self, yseq, row_utt, candidates):
        xp, T, like = self.xp, self.n_frames, self.logp_vt
        n = int(yseq.shape[0])
        vocab = int(self.logp_vt.shape[1])
        self.output_length = int(yseq.shape[1]) - 1
        last = xp.index(yseq[:, -1], like=like)
        self.last = last
        if candidates is None:  # score every token (ctc_weight == 1: no pre-beam)
            candidates = xp.broadcast_to(xp.to(xp.arange(vocab), like), (n, vocab))
        candidates = xp.index(candidates, like=like)
        r_prev = self.r
        r_sum = xp.logsumexp(r_prev, 1)  # (T, n)
        # phi: probability of the prefix ending at t-1 in a state that may emit c;
        # a repeated label must pass through a blank.
        same = (candidates == last[:, None])[None]  # (1, n, K)
        log_phi = xp.where(same, r_prev[:, 1][:, :, None], r_sum[:, :, None])  # (T, n, K)
        x_c = xp.permute(self.logp_vt[self.row_utt[:, None], candidates], (2, 0, 1))  # (T, n, K)
        start = self._start()
        r_init = x_c[0] if self.output_length == 0 else xp.full(x_c[0].shape, LOG_ZERO, like=x_c)
        log_phi_x = xp.cat([log_phi[:1], log_phi[:-1]], 0) + x_c
        log_psi_c = xp.logsumexp(xp.cat([log_phi_x[start:T], r_init[None]], 0), 0)
        log_psi = xp.full((n, vocab), LOG_ZERO, like=r_prev)
        xp.put_along_rows(log_psi, candidates, log_psi_c)
        log_psi[:, self.eos] = r_sum[self.end_frames[self.row_utt], xp.to(xp.arange(n), like)]
        if self.eos != self.blank:
            log_psi[:, self.blank] = LOG_ZERO
        self._r_sum, self._log_psi = r_sum, log_psi
        s_prev = self.s_prev if isinstance(self.s_prev, float) else self.s_prev[:, None]
        return xp.cast(log_psi - s_prev, like=r_prev)

    def advance(self, parents, tokens):
        assert self.last is not None and self._r_sum is not None and self._log_psi is not None, "advance before score"
        xp, like = self.xp, self.logp_vt
        parents, tokens = xp.index(parents, like=like), xp.index(tokens, like=like)
        utt = self.row_utt[parents]
        same = (tokens == self.last[parents])[None]
        phi = xp.where(same, self.r[:, 1][:, parents], self._r_sum[:, parents])  # (T, m)
        x_c = self.logp_vt[utt, tokens].T  # (T, m)
        x_b = self.xb[utt].T  # (T, m)
        self.r = self._recurse_loop(phi, x_c, x_b) if self.recursion == "loop" else self._recurse_scan(phi, x_c, x_b)
        self.s_prev = self._log_psi[parents, tokens]
        self.row_utt = utt
        self._r_sum = self._log_psi = None

    def prime(self, yseq, row_utt, hint=None):
        """Start from a known prefix; ``hint`` may carry its forward variables (CTC leap).

        ``hint`` is a :class:`pasu.streaming.ctc_leap.PrefixForward`-like object
        with ``r`` (T, 2) — the prefix's forward variables over these frames, numpy
        or torch — and ``psi`` (its log prefix probability); without it the prefix
        is replayed token by token.
        """
        if hint is None:
            return super().prime(yseq, row_utt, hint)
        if not isinstance(hint, PrefixHint):
            raise TypeError(f"a CTC hint needs .r and .psi, got {type(hint).__name__}")
        xp, n = self.xp, int(yseq.shape[0])
        r = xp.cast(hint.r, like=self.logp_vt)
        if tuple(r.shape) != (self.n_frames, 2):
            raise ValueError(f"prefix forward variables have shape {tuple(r.shape)}, need ({self.n_frames}, 2)")
        self.r = xp.contiguous(xp.broadcast_to(r[:, :, None], (self.n_frames, 2, n)))
        self.s_prev = xp.full((n,), float(hint.psi), like=self.logp_vt)
        self.output_length = int(yseq.shape[1]) - 1
        return self.s_prev + 0.0  # a copy: the caller may add to it

    def _recurse_loop(self, phi, x_c, x_b):
        """ESPnet's recursion, frame by frame, for the surviving rows only."""
        xp = self.xp
        T, m = x_c.shape
        r = xp.full((T, 2, m), LOG_ZERO, like=x_c)
        if self.output_length == 0:
            r[0, 0] = x_c[0]
        x = xp.stack([x_c, x_b], 1)  # (T, 2, m)
        for t in range(self._start(), T):
            rp = r[t - 1]
            rr = xp.stack([rp[0], phi[t - 1], rp[0], rp[1]], 0).reshape(2, 2, m)
            r[t] = xp.logsumexp(rr, 1) + x[t]
        return r

    def _recurse_scan(self, phi, x_c, x_b):
        """The same recursion in closed form (cumulative log-sum-exp), in float64."""
        xp = self.xp
        T, m = x_c.shape
        start = self._start()
        out = xp.full((T, 2, m), LOG_ZERO, like=x_c)
        a_init = x_c[0] if self.output_length == 0 else xp.full(x_c[0].shape, LOG_ZERO, like=x_c)
        out[start - 1, 0] = a_init
        if start >= T:
            return out
        a0 = xp.float64(a_init)
        # r^n_t = logaddexp(r^n_{t-1}, phi_{t-1}) + x_t(c)
        C = xp.cumsum(xp.float64(x_c[start:]))  # C_t, t = start..T-1
        C_prev = xp.cat([xp.zeros(C[:1].shape, like=C), C[:-1]], 0)  # C_{t-1}, with C_{start-1} = 0
        Z = xp.logcumsumexp(xp.float64(phi[start - 1 : T - 1]) - C_prev)
        a = C + xp.logaddexp(a0[None], Z)  # (T - start, m)
        # r^b_t = logaddexp(r^n_{t-1}, r^b_{t-1}) + x_t(blank), r^b_{start-1} = log 0
        D = xp.cumsum(xp.float64(x_b[start:]))
        D_prev = xp.cat([xp.zeros(D[:1].shape, like=D), D[:-1]], 0)
        a_prev = xp.cat([a0[None], a[:-1]], 0)  # r^n_{t-1}
        b = D + xp.logcumsumexp(a_prev - D_prev)
        out[start:, 0] = xp.cast(a, like=x_c)
        out[start:, 1] = xp.cast(b, like=x_c)
        return out
