"""CTC prefix scoring (Watanabe et al. 2017, Alg. 2), vectorized and computed lazily.

ESPnet's ``CTCPrefixScoreTH`` runs the forward recursion over every frame for
every (hypothesis, pre-beam candidate) pair — a Python loop of T iterations,
each on a (2, 2, hyps, candidates) tensor — and then keeps only the ``beam``
pairs that survive. Two observations make it cheaper at identical output:

1. The prefix probability psi(h + c) needs no recursion at all:
   psi = r^n_{start-1}(h + c) + sum_t phi_{t-1}(h, c) * x_t(c), one log-sum-exp
   over frames for all candidates at once (exactly the expression ESPnet uses).
2. The forward variables r^n, r^b are only needed for the hypotheses that
   survive the beam, so they are computed after pruning, for ``beam`` rows
   instead of ``beam * pre_beam``. With ``ctc_recursion="scan"`` the recursion
   itself becomes closed form: r^n_t = C_t + logcumsumexp_s(phi_s - C_s), with C
   the cumulative log-probability of the token (float64, so the subtraction of
   large cumulative sums loses nothing that matters); likewise r^b. A handful of
   tensor ops per step instead of a few per frame.

The scorer keeps its state in its session (one per search), never on itself.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from pasu.decoding.scorers import LOG_ZERO, EncoderBatch, Scorer, ScorerSession


@runtime_checkable
class PrefixHint(Protocol):
    """A prefix's CTC forward variables ``r`` (T, 2; numpy or torch) and its log prefix probability ``psi``."""

    r: Any
    psi: float


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
        return CTCPrefixSession(self, self.log_probs(batch), batch.lengths, row_utt)


class CTCPrefixSession(ScorerSession):
    """Forward variables r (T, 2, rows) and prefix scores of the running hypotheses."""

    def __init__(self, scorer: CTCPrefixScorer, logp: torch.Tensor, lengths: torch.Tensor, row_utt: torch.Tensor):
        self.s = scorer
        self.logp_vt = logp.transpose(1, 2).contiguous()  # (B, V, T): token rows gather fast
        self.n_frames = logp.size(1)
        self.end_frames = (lengths - 1).to(logp.device)
        self.row_utt = row_utt.to(logp.device)
        xb = logp[:, :, scorer.blank]  # (B, T)
        self.xb = xb
        # The empty prefix: only blanks so far.
        r = torch.full((self.n_frames, 2, row_utt.numel()), LOG_ZERO, dtype=logp.dtype, device=logp.device)
        r[:, 1] = torch.cumsum(xb, 1).t().index_select(1, self.row_utt)
        self.r = r
        self.s_prev: torch.Tensor | float = 0.0
        self.last: torch.Tensor | None = None  # last token of each row's prefix
        self.output_length = 0
        # filled by score(), consumed by advance()
        self._r_sum: torch.Tensor | None = None
        self._log_psi: torch.Tensor | None = None

    def _start(self) -> int:
        return min(max(self.output_length, 1), self.n_frames)

    def score(self, yseq, row_utt, candidates):
        T, dev = self.n_frames, self.logp_vt.device
        n = yseq.size(0)
        vocab = self.logp_vt.size(1)
        self.output_length = yseq.size(1) - 1
        last = yseq[:, -1].to(dev)
        self.last = last
        if candidates is None:  # score every token (ctc_weight == 1: no pre-beam)
            candidates = torch.arange(vocab, device=dev).expand(n, vocab)
        candidates = candidates.to(dev)
        r_prev = self.r
        r_sum = torch.logsumexp(r_prev, 1)  # (T, n)
        # phi: probability of the prefix ending at t-1 in a state that may emit c;
        # a repeated label must pass through a blank.
        same = (candidates == last[:, None]).unsqueeze(0)  # (1, n, K)
        log_phi = torch.where(same, r_prev[:, 1].unsqueeze(2), r_sum.unsqueeze(2))  # (T, n, K)
        x_c = self.logp_vt[self.row_utt.unsqueeze(1), candidates].permute(2, 0, 1)  # (T, n, K)
        start = self._start()
        r_init = x_c[0] if self.output_length == 0 else torch.full_like(x_c[0], LOG_ZERO)
        log_phi_x = torch.cat((log_phi[0].unsqueeze(0), log_phi[:-1]), dim=0) + x_c
        log_psi_c = torch.logsumexp(torch.cat((log_phi_x[start:T], r_init.unsqueeze(0)), dim=0), dim=0)
        log_psi = torch.full((n, vocab), LOG_ZERO, dtype=r_prev.dtype, device=dev)
        log_psi.scatter_(1, candidates, log_psi_c)
        log_psi[:, self.s.eos] = r_sum[self.end_frames[self.row_utt], torch.arange(n, device=dev)]
        if self.s.eos != self.s.blank:
            log_psi[:, self.s.blank] = LOG_ZERO
        self._r_sum, self._log_psi = r_sum, log_psi
        return log_psi - (self.s_prev.unsqueeze(1) if torch.is_tensor(self.s_prev) else self.s_prev)

    def advance(self, parents, tokens):
        assert self.last is not None and self._r_sum is not None and self._log_psi is not None, "advance before score"
        dev = self.logp_vt.device
        parents, tokens = parents.to(dev), tokens.to(dev)
        utt = self.row_utt.index_select(0, parents)
        same = (tokens == self.last.index_select(0, parents)).unsqueeze(0)
        phi = torch.where(same, self.r[:, 1].index_select(1, parents), self._r_sum.index_select(1, parents))
        x_c = self.logp_vt[utt, tokens].t()  # (T, m)
        x_b = self.xb.index_select(0, utt).t()  # (T, m)
        if self.s.recursion == "loop":
            self.r = self._recurse_loop(phi, x_c, x_b)
        else:
            self.r = self._recurse_scan(phi, x_c, x_b)
        self.s_prev = self._log_psi[parents, tokens]
        self.row_utt = utt
        self._r_sum = self._log_psi = None

    def prime(self, yseq, row_utt, hint=None):
        """Start from a known prefix; ``hint`` may carry its forward variables (CTC leap).

        ``hint`` is a :class:`pasu.streaming.ctc_leap.PrefixForward`-like object
        with ``r`` (T, 2) — the prefix's forward variables over these frames — and
        ``psi`` (its log prefix probability); without it the prefix is replayed
        token by token.
        """
        if hint is None:
            return super().prime(yseq, row_utt, hint)
        n = yseq.size(0)
        if not isinstance(hint, PrefixHint):
            raise TypeError(f"a CTC hint needs .r and .psi, got {type(hint).__name__}")
        r = torch.as_tensor(hint.r).to(device=self.logp_vt.device, dtype=self.logp_vt.dtype)  # numpy or tensor
        if r.size(0) != self.n_frames:
            raise ValueError(f"prefix forward variables cover {r.size(0)} frames, encoder has {self.n_frames}")
        self.r = r.unsqueeze(2).expand(-1, -1, n).contiguous()
        psi = torch.as_tensor(hint.psi, dtype=self.logp_vt.dtype, device=self.logp_vt.device).expand(n).clone()
        self.s_prev = psi
        self.output_length = yseq.size(1) - 1
        return psi

    def _recurse_loop(self, phi, x_c, x_b):
        """ESPnet's recursion, frame by frame, for the surviving rows only."""
        T, m = x_c.shape
        r = torch.full((T, 2, m), LOG_ZERO, dtype=x_c.dtype, device=x_c.device)
        if self.output_length == 0:
            r[0, 0] = x_c[0]
        x = torch.stack((x_c, x_b), dim=1)  # (T, 2, m)
        for t in range(self._start(), T):
            rp = r[t - 1]
            rr = torch.stack([rp[0], phi[t - 1], rp[0], rp[1]]).view(2, 2, m)
            r[t] = torch.logsumexp(rr, 1) + x[t]
        return r

    def _recurse_scan(self, phi, x_c, x_b):
        """The same recursion in closed form (cumulative log-sum-exp), in float64."""
        T, m = x_c.shape
        start = self._start()
        out = torch.full((T, 2, m), LOG_ZERO, dtype=x_c.dtype, device=x_c.device)
        a_init = x_c[0] if self.output_length == 0 else torch.full_like(x_c[0], LOG_ZERO)
        out[start - 1, 0] = a_init
        if start >= T:
            return out
        f64 = torch.float64
        a0 = a_init.to(f64)
        # r^n_t = logaddexp(r^n_{t-1}, phi_{t-1}) + x_t(c)
        C = torch.cumsum(x_c[start:].to(f64), 0)  # C_t, t = start..T-1
        C_prev = torch.cat((torch.zeros_like(C[:1]), C[:-1]))  # C_{t-1}, with C_{start-1} = 0
        Z = torch.logcumsumexp(phi[start - 1 : T - 1].to(f64) - C_prev, 0)
        a = C + torch.logaddexp(a0.unsqueeze(0), Z)  # (T - start, m)
        # r^b_t = logaddexp(r^n_{t-1}, r^b_{t-1}) + x_t(blank), r^b_{start-1} = log 0
        D = torch.cumsum(x_b[start:].to(f64), 0)
        D_prev = torch.cat((torch.zeros_like(D[:1]), D[:-1]))
        a_prev = torch.cat((a0.unsqueeze(0), a[:-1]))  # r^n_{t-1}
        b = D + torch.logcumsumexp(a_prev - D_prev, 0)
        out[start:, 0] = a.to(x_c.dtype)
        out[start:, 1] = b.to(x_c.dtype)
        return out
