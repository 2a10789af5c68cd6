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

Plain numpy in float64 (no torch), so the torch runtime and the torch-free device
runtime (:mod:`pasu.lite`) run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pasu.decoding.interface import LOG_ZERO

F64 = NDArray[np.float64]


@dataclass
class PrefixForward:
    """What a seeded CTC session needs: ``r`` (T, 2) float64 of the whole prefix and its ``psi``."""

    r: F64
    psi: float


def logsumexp(x: F64, axis: int | None = None) -> F64:
    """log(sum(exp(x))) along ``axis``, stable for finite inputs (LOG_ZERO stands for log 0)."""
    m = np.max(x, axis=axis, keepdims=True)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def as_numpy(x: Any) -> np.ndarray:
    """``x`` as a numpy array; a torch tensor (any device) is detached and brought to the host
    by duck typing, so this module never imports torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


def log_posteriors(logp: Any) -> np.ndarray:
    """``logp`` (T, V) as a numpy array; columns are cast to float64 only where read, so the
    whole matrix is never copied."""
    a = as_numpy(logp)
    if a.ndim != 2:
        raise ValueError(f"CTC log-posteriors must be (T, V), got shape {a.shape}")
    return a


def _extend_one(prev: F64, token: int, same: bool, logp: np.ndarray, u: int) -> F64:
    """Forward variables (T, 2) of prefix[:u] from those of prefix[:u-1], all frames (float64 scan)."""
    T = logp.shape[0]
    out = np.full((T, 2), LOG_ZERO, dtype=np.float64)
    output_length = u - 1
    start = min(max(output_length, 1), T)
    x_c = logp[:, token].astype(np.float64)
    x_b = logp[:, 0].astype(np.float64)
    phi = prev[:, 1] if same else np.logaddexp(prev[:, 0], prev[:, 1])
    a0 = float(x_c[0]) if output_length == 0 else LOG_ZERO
    out[start - 1, 0] = a0
    if start >= T:
        return out
    C = np.cumsum(x_c[start:])
    C_prev = np.concatenate(([0.0], C[:-1]))
    a = C + np.logaddexp(a0, np.logaddexp.accumulate(phi[start - 1 : T - 1] - C_prev))
    D = np.cumsum(x_b[start:])
    D_prev = np.concatenate(([0.0], D[:-1]))
    a_prev = np.concatenate(([a0], a[:-1]))
    b = D + np.logaddexp.accumulate(a_prev - D_prev)
    out[start:, 0], out[start:, 1] = a, b
    return out


class PrefixForwardCache:
    """Forward variables R (U+1, T, 2) of one prefix's every sub-prefix, on one utterance."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.R: F64 | None = None
        #: the last update: how many sub-prefixes' forward variables it carried over
        #: (0: computed from scratch) and over how many new frames it extended them
        self.reused_tokens = 0
        self.extended_frames = 0

    def update(self, tokens: list[int], logp: Any, leap: bool = True) -> PrefixForward:
        """Forward variables of ``tokens`` on ``logp`` (T, V) CTC log-posteriors (blank = 0)."""
        lp = log_posteriors(logp)
        T = lp.shape[0]
        keep = 0
        R_old = self.R if leap and self.R is not None and self.R.shape[1] <= T else None
        if R_old is not None:
            while keep < min(len(tokens), len(self.tokens)) and tokens[keep] == self.tokens[keep]:
                keep += 1
        if R_old is not None and R_old.shape[1] > keep + 1:
            self.extended_frames = T - R_old.shape[1]
            R = self._leap(R_old[: keep + 1], self.tokens[:keep], lp)
        else:
            keep = 0
            self.extended_frames = 0
            R = np.full((1, T, 2), LOG_ZERO, dtype=np.float64)
            R[0, :, 1] = np.cumsum(lp[:, 0].astype(np.float64))  # the empty prefix: blanks only
        rows = list(R)
        for u in range(keep + 1, len(tokens) + 1):
            same = u > 1 and tokens[u - 1] == tokens[u - 2]
            rows.append(_extend_one(rows[u - 1], tokens[u - 1], same, lp, u))
        self.R = np.stack(rows)
        self.tokens = list(tokens)
        self.reused_tokens = keep
        return PrefixForward(r=self.R[-1].copy(), psi=self.psi(lp))

    def psi(self, logp: Any) -> float:
        """log P(the prefix is a prefix of the output), as the beam search scores it."""
        U = len(self.tokens)
        if U == 0:
            return 0.0
        lp = log_posteriors(logp)
        T = lp.shape[0]
        assert self.R is not None, "psi before update"
        prev = self.R[U - 1]
        same = U > 1 and self.tokens[-1] == self.tokens[-2]
        phi = prev[:, 1] if same else np.logaddexp(prev[:, 0], prev[:, 1])
        start = min(max(U - 1, 1), T)
        x_c = lp[:, self.tokens[-1]].astype(np.float64)
        r_init = float(x_c[0]) if U == 1 else LOG_ZERO
        phi_x = np.concatenate((phi[:1], phi[:-1])) + x_c
        return float(logsumexp(np.concatenate((phi_x[start:T], [r_init]))))

    @staticmethod
    def _leap(R_old: F64, tokens: list[int], logp: np.ndarray) -> F64:
        """Keep R over the old frames; run the recursion over the new frames only, all u at once."""
        U1, T_old, _ = R_old.shape
        T = logp.shape[0]
        R = np.full((U1, T, 2), LOG_ZERO, dtype=np.float64)
        R[:, :T_old] = R_old
        if T == T_old:
            return R
        toks = np.asarray(tokens, dtype=np.int64)
        same = np.zeros(U1 - 1, dtype=bool)  # same[u - 1]: token u repeats token u - 1
        if U1 > 2:
            same[1:] = toks[1:] == toks[:-1]
        x_c = logp[T_old:, toks].astype(np.float64)  # (T - T_old, U)
        x_b = logp[T_old:, 0].astype(np.float64)
        rn, rb = R[:, T_old - 1, 0].copy(), R[:, T_old - 1, 1].copy()
        for i, t in enumerate(range(T_old, T)):
            phi = np.where(same, rb[:-1], np.logaddexp(rn[:-1], rb[:-1]))  # (U,)
            new_rn = np.full_like(rn, LOG_ZERO)
            new_rn[1:] = np.logaddexp(rn[1:], phi) + x_c[i]
            rb = np.logaddexp(rn, rb) + x_b[i]
            rn = new_rn
            R[:, t, 0], R[:, t, 1] = rn, rb
        return R
