"""Beam collapse: what the pilots agree on, as the seed of the next search.

Each pilot, and the final search, starts from the prefix that the last
``collapse_pilots`` pilots agree on (by default the latest pilot's best alone),
less ``collapse_holdback`` tokens at the audio frontier. A pilot seeded this way
can only extend the seed, so pilots build on each other and the final search is
left the tokens after it.

With ``collapse_confirm`` the seed is cut where the audio heard *now* stops
supporting it: one teacher-forced decoder pass over the seed, and each token
must still be the best next token under the search's own weighting of decoder
and CTC scores (the CTC forward variables of every sub-prefix are the leap's,
so this costs no recursion). Pilots guess on partial audio; a guess that later
audio contradicts (an intent label decided by the last word) is not carried
into the final answer.

The seed's CTC forward variables come from a :class:`PrefixForwardCache` kept
across pilots (CTC leap): only frames that are new since the last pilot are run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pasu.decoding.recognizer import NBestEntry
from pasu.streaming.ctc_leap import PrefixForward, PrefixForwardCache
from pasu.streaming.options import StreamingOptions

#: why a search was not seeded (counted in :attr:`PrefixCommitter.refused`)
REFUSALS = ("too_few_pilots", "empty_pilot", "margin", "too_short", "too_long", "unconfirmed")


def common_prefix(seqs: Sequence[Sequence[int]]) -> list[int]:
    if not seqs:
        return []
    n = min(len(s) for s in seqs)
    k = 0
    while k < n and all(s[k] == seqs[0][k] for s in seqs):
        k += 1
    return list(seqs[0][:k])


@dataclass
class Seed:
    """Where a search starts: a prefix and its CTC forward variables."""

    prefix: list[int]
    hint: PrefixForward | None  # None: the search replays the prefix's CTC scores
    leapt: bool  # its forward variables were extended over new frames, not recomputed


class PrefixCommitter:
    """Decides the seed of each search of one utterance from the pilots before it."""

    def __init__(self, options: StreamingOptions, ctc_weight: float) -> None:
        self.o = options
        self.ctc_weight = ctc_weight  # the search's, so confirmation weighs as the search does
        self.refused: Counter[str] = Counter()
        self._cache = PrefixForwardCache()

    def seed(
        self,
        pilots: Sequence[Sequence[NBestEntry]],
        frames: int,
        ctc_logp: Callable[[], torch.Tensor],
        decoder_logp: Callable[[list[int]], torch.Tensor | None],
    ) -> Seed | None:
        """The seed for a search over ``frames`` frames, from the n-best lists of the pilots so far.

        ``ctc_logp()`` gives the (T, V) CTC log-posteriors now; ``decoder_logp(prefix)``
        the decoder's (U, V) log-probabilities of each position of ``prefix``,
        teacher-forced on the audio heard now (None where the decoder cannot).
        """
        prefix = self._agreed(pilots, frames)
        if prefix is None:
            return None
        if not self.o.ctc_leap and not self.o.collapse_confirm:
            return Seed(prefix, None, False)
        lp = ctc_logp()
        hint = self._cache.update(prefix, lp, leap=self.o.ctc_leap)
        leapt = self._cache.reused_tokens > 0 and self._cache.extended_frames > 0
        dec = decoder_logp(prefix) if self.o.collapse_confirm else None
        if dec is not None and self._cache.R is not None:
            keep = confirmed_length(prefix, dec, lp, self._cache.R, self.ctc_weight)
            if keep == 0:
                return self._refuse("unconfirmed")
            if keep < len(prefix):
                prefix = prefix[:keep]
                hint = self._cache.update(prefix, lp, leap=True)  # a cut: the rows are there already
        return Seed(prefix, hint if self.o.ctc_leap else None, leapt)

    def _agreed(self, pilots: Sequence[Sequence[NBestEntry]], frames: int) -> list[int] | None:
        o = self.o
        if len(pilots) < o.collapse_pilots:
            return self._refuse("too_few_pilots")
        recent = pilots[-o.collapse_pilots :]
        if any(not p or not p[0].token_ids for p in recent):
            return self._refuse("empty_pilot")
        latest = recent[-1]
        if o.collapse_margin > 0 and len(latest) > 1 and latest[0].score - latest[1].score < o.collapse_margin:
            return self._refuse("margin")
        agreed = common_prefix([p[0].token_ids for p in recent])
        prefix = agreed[: max(0, len(agreed) - o.collapse_holdback)]
        if not prefix:
            return self._refuse("too_short")
        if len(prefix) >= frames - 1:
            return self._refuse("too_long")
        return prefix

    def _refuse(self, why: str) -> None:
        self.refused[why] += 1
        return None


def confirmed_length(
    prefix: list[int],
    dec_logp: torch.Tensor,
    ctc_logp: torch.Tensor,
    R: torch.Tensor,
    ctc_weight: float,
    candidates: int = 8,
) -> int:
    """How many leading tokens of ``prefix`` the joint decoder + CTC score still picks first.

    At each position u the committed token must score at least as well as each of
    the decoder's ``candidates`` best tokens, weighted as the beam search weighs
    them: ``(1 - w) * decoder + w * CTC prefix score``. ``dec_logp`` (U, V) are
    the decoder's log-probabilities of each position, ``R`` (>= U, T, 2) the CTC
    forward variables of every sub-prefix (:class:`PrefixForwardCache`),
    ``ctc_logp`` (T, V) the CTC log-posteriors (blank = 0).
    """
    U = len(prefix)
    if U == 0:
        return 0
    T = ctc_logp.size(0)
    lp = ctc_logp.detach().double().cpu()
    dec = dec_logp.detach().double().cpu()[:U]
    toks = torch.tensor(prefix, dtype=torch.long)
    top = dec.topk(min(candidates, dec.size(1)), dim=-1).indices  # (U, K)
    cand = torch.cat((toks.unsqueeze(1), top), dim=1)  # the committed token first
    Rd = R[:U].double()  # (U, T, 2): forward variables of prefix[:u]
    last = torch.cat((torch.tensor([-1]), toks[:-1]))  # the last token of prefix[:u]
    same = cand == last.unsqueeze(1)  # a repeated label must pass through a blank
    r_sum = torch.logaddexp(Rd[..., 0], Rd[..., 1])  # (U, T)
    phi = torch.where(same.unsqueeze(1), Rd[..., 1].unsqueeze(2), r_sum.unsqueeze(2))  # (U, T, K+1)
    phi_prev = torch.cat((phi[:, :1], phi[:, :-1]), dim=1)
    x = lp[:, cand].permute(1, 0, 2)  # (U, T, K+1)
    frame = torch.arange(T).unsqueeze(0)
    valid = (frame >= torch.arange(U).clamp(min=1).unsqueeze(1)).unsqueeze(2)  # frames from max(u, 1) on
    psi = torch.logsumexp(torch.where(valid, phi_prev + x, torch.tensor(-1e30, dtype=torch.float64)), dim=1)
    psi[0] = torch.logaddexp(psi[0], x[0, 0])  # the first token may start at frame 0
    joint = (1 - ctc_weight) * dec.gather(1, cand) + ctc_weight * psi  # (U, K+1)
    ok = joint[:, 0] >= joint[:, 1:].max(dim=1).values - 1e-9
    bad = (~ok).nonzero()
    return int(bad[0]) if bad.numel() else U
