"""CTC leap: forward variables of an agreed prefix, carried from pilot to pilot.

For a prefix P = p_1..p_U, ``R[u, t] = (r^n_t, r^b_t)(p_1..p_u)`` are the CTC
forward variables of every prefix of P (u = 0 is the empty prefix). A pilot
computes them over the frames it has; the next pilot — or the final pass —
keeps them for the old frames and only runs the recursion over the new frames,
one vectorized step per new frame for all u at once, instead of recomputing
every prefix from frame 0. Prefixes that are new (P grew) are computed over all
frames with the closed-form scan.

The encoder's top attention blocks see more audio at each pilot, so the
posteriors of old frames move slightly: reusing their forward variables is an
approximation, switched by ``StreamingOptions.ctc_leap`` and measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pasu.decoding.scorers import LOG_ZERO


@dataclass
class PrefixForward:
    """What a seeded CTC session needs: ``r`` (T, 2) of the whole prefix and its ``psi``."""

    r: torch.Tensor
    psi: float


def _lae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.logaddexp(a, b)


def _extend_one(prev: torch.Tensor, token: int, same: bool, logp: torch.Tensor, u: int) -> torch.Tensor:
    """Forward variables (T, 2) of prefix[:u] from those of prefix[:u-1], all frames (float64 scan)."""
    T = logp.size(0)
    out = torch.full((T, 2), LOG_ZERO, dtype=torch.float64)
    output_length = u - 1
    start = min(max(output_length, 1), T)
    x_c = logp[:, token].double()
    x_b = logp[:, 0].double()
    phi = prev[:, 1] if same else torch.logaddexp(prev[:, 0], prev[:, 1])
    a0 = x_c[0] if output_length == 0 else torch.tensor(LOG_ZERO, dtype=torch.float64)
    out[start - 1, 0] = a0
    if start >= T:
        return out
    C = torch.cumsum(x_c[start:], 0)
    C_prev = torch.cat((torch.zeros(1, dtype=torch.float64), C[:-1]))
    a = C + torch.logaddexp(a0, torch.logcumsumexp(phi[start - 1 : T - 1] - C_prev, 0))
    D = torch.cumsum(x_b[start:], 0)
    D_prev = torch.cat((torch.zeros(1, dtype=torch.float64), D[:-1]))
    a_prev = torch.cat((a0.reshape(1), a[:-1]))
    b = D + torch.logcumsumexp(a_prev - D_prev, 0)
    out[start:, 0], out[start:, 1] = a, b
    return out


class PrefixForwardCache:
    """Forward variables R (U+1, T, 2) of one prefix's every sub-prefix, on one utterance."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.R: torch.Tensor | None = None  # float64
        #: the last update: how many sub-prefixes' forward variables it carried over
        #: (0: computed from scratch) and over how many new frames it extended them
        self.reused_tokens = 0
        self.extended_frames = 0

    def update(self, tokens: list[int], logp: torch.Tensor, leap: bool = True) -> PrefixForward:
        """Forward variables of ``tokens`` on ``logp`` (T, V) CTC log-posteriors (blank = 0)."""
        logp = logp.detach().double().cpu()
        T = logp.size(0)
        keep = 0
        if leap and self.R is not None and self.R.size(1) <= T:
            while keep < min(len(tokens), len(self.tokens)) and tokens[keep] == self.tokens[keep]:
                keep += 1
        if leap and self.R is not None and self.R.size(1) <= T and self.R.size(1) > keep + 1:
            self.extended_frames = T - self.R.size(1)
            R = self._leap(self.R[: keep + 1], self.tokens[:keep], logp)
        else:
            keep = 0
            self.extended_frames = 0
            R = torch.full((1, T, 2), LOG_ZERO, dtype=torch.float64)
            R[0, :, 1] = torch.cumsum(logp[:, 0], 0)  # the empty prefix: blanks only
        rows = [R[u] for u in range(R.size(0))]
        for u in range(keep + 1, len(tokens) + 1):
            same = u > 1 and tokens[u - 1] == tokens[u - 2]
            rows.append(_extend_one(rows[u - 1], tokens[u - 1], same, logp, u))
        self.R = torch.stack(rows)
        self.tokens = list(tokens)
        self.reused_tokens = keep
        return PrefixForward(r=self.R[-1].float(), psi=self.psi(logp))

    def psi(self, logp: torch.Tensor) -> float:
        """log P(the prefix is a prefix of the output), as the beam search scores it."""
        U = len(self.tokens)
        if U == 0:
            return 0.0
        T = logp.size(0)
        assert self.R is not None, "psi before update"
        prev = self.R[U - 1]
        same = U > 1 and self.tokens[-1] == self.tokens[-2]
        phi = prev[:, 1] if same else torch.logaddexp(prev[:, 0], prev[:, 1])
        start = min(max(U - 1, 1), T)
        x_c = logp[:, self.tokens[-1]].double()
        r_init = x_c[0] if U == 1 else torch.tensor(LOG_ZERO, dtype=torch.float64)
        phi_x = torch.cat((phi[:1], phi[:-1])) + x_c
        return float(torch.logsumexp(torch.cat((phi_x[start:T], r_init.reshape(1))), 0))

    @staticmethod
    def _leap(R_old: torch.Tensor, tokens: list[int], logp: torch.Tensor) -> torch.Tensor:
        """Keep R over the old frames; run the recursion over the new frames only, all u at once."""
        U1, T_old, _ = R_old.shape
        T = logp.size(0)
        R = torch.full((U1, T, 2), LOG_ZERO, dtype=torch.float64)
        R[:, :T_old] = R_old
        if T == T_old:
            return R
        toks = torch.tensor(tokens, dtype=torch.long)
        same = torch.zeros(U1, dtype=torch.bool)
        if U1 > 2:
            same[2:] = toks[1:] == toks[:-1]
        x_c = logp[:, toks] if len(tokens) else torch.zeros(T, 0, dtype=torch.float64)  # (T, U)
        x_b = logp[:, 0]
        rn, rb = R[:, T_old - 1, 0].clone(), R[:, T_old - 1, 1].clone()
        for t in range(T_old, T):
            phi = torch.where(same[1:], rb[:-1], torch.logaddexp(rn[:-1], rb[:-1]))  # (U,)
            new_rn = torch.full_like(rn, LOG_ZERO)
            new_rn[1:] = torch.logaddexp(rn[1:], phi) + x_c[t]
            new_rb = torch.logaddexp(rn, rb) + x_b[t]
            rn, rb = new_rn, new_rb
            R[:, t, 0], R[:, t, 1] = rn, rb
        return R
