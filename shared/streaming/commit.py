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

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pasu.decoding.interface import EncoderBatch
from pasu.decoding.kv_decoder import KVCacheDecoderSession, TeacherForced
from pasu.decoding.recognizer import NBestEntry, Recognizer
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
    """Where a search starts: a prefix, its CTC forward variables and its decoder pass."""

    prefix: list[int]
    hint: PrefixForward | None  # None: the search replays the prefix's CTC scores
    leapt: bool  # its forward variables were extended over new frames, not recomputed
    decoder: TeacherForced | None = None  # the confirmation's pass: the search need not redo it

    def prime_hints(self) -> dict[str, object]:
        """What the search's scorer sessions start from (``Recognizer.decode(prime_hints=)``)."""
        hints: dict[str, object] = {}
        if self.hint is not None:
            hints["ctc"] = self.hint
        if self.decoder is not None:
            hints["decoder"] = self.decoder
        return hints


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
        decoder_logp: Callable[[list[int]], TeacherForced | None],
    ) -> Seed | None:
        """The seed for a search over ``frames`` frames, from the n-best lists of the pilots so far.

        ``ctc_logp()`` gives the (T, V) CTC log-posteriors now; ``decoder_logp(prefix)``
        the decoder teacher-forced over ``prefix`` on the audio heard now
        (:func:`decoder_logp`; None where the decoder cannot).
        """
        prefix = self._agreed(pilots, frames)
        if prefix is None:
            return None
        if not self.o.ctc_leap and not self.o.collapse_confirm:
            return Seed(prefix, None, False)
        seed = confirm(
            prefix,
            ctc_logp(),
            decoder_logp if self.o.collapse_confirm else None,
            self.ctc_weight,
            self._cache,
            leap=self.o.ctc_leap,
            margin=self.o.collapse_confirm_margin,
        )
        if seed is None:
            return self._refuse("unconfirmed")
        return seed if self.o.ctc_leap else Seed(seed.prefix, None, seed.leapt, seed.decoder)

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


def confirm(
    prefix: list[int],
    ctc_logp: torch.Tensor,
    decoder_logp: Callable[[list[int]], TeacherForced | None] | None,
    ctc_weight: float,
    cache: PrefixForwardCache | None = None,
    leap: bool = True,
    margin: float = 0.0,
) -> Seed | None:
    """``prefix`` cut where the audio of ``ctc_logp`` (T, V) stops confirming it, with its CTC
    forward variables; None if not even its first token is confirmed.

    The one rule both sides use: a device's pilots seed its next search with it, and the
    cloud seeds its search with the device's hypothesis (:mod:`pasu.cloud.reuse`), judged
    by the cloud's own decoder and CTC. ``cache`` carries forward variables from an earlier
    call on the same utterance (CTC leap); without ``decoder_logp`` nothing is cut.
    """
    cache = cache if cache is not None else PrefixForwardCache()
    hint = cache.update(prefix, ctc_logp, leap=leap)
    leapt = cache.reused_tokens > 0 and cache.extended_frames > 0
    dec = decoder_logp(prefix) if decoder_logp is not None else None
    if dec is not None and cache.R is not None:
        keep = confirmed_length(prefix, dec.logp, ctc_logp, cache.R, ctc_weight, margin=margin)
        if keep == 0:
            return None
        if keep < len(prefix):
            prefix = prefix[:keep]
            hint = cache.update(prefix, ctc_logp, leap=True)  # a cut: the rows are there already
    return Seed(prefix, hint, leapt, dec)


def decoder_logp(recognizer: Recognizer, batch: EncoderBatch, prefix: list[int]) -> TeacherForced | None:
    """The decoder teacher-forced over ``prefix`` on ``batch``'s one utterance in one pass: each
    token's (U, V) log-probabilities, and the keys/values a search from the prefix starts with
    (None for a decoder without a kv-cache session)."""
    rows = torch.zeros(1, dtype=torch.long)
    session = recognizer.scorers["decoder"].begin(batch, rows)
    if not isinstance(session, KVCacheDecoderSession):
        return None
    yseq = torch.tensor([[recognizer.model.sos, *prefix]], device=batch.enc.device)
    logp = session.teacher_forced(yseq, rows)[0]
    assert session.cache is not None
    return TeacherForced(logp, session.cache)


def confirmed_length(
    prefix: list[int],
    dec_logp: torch.Tensor,
    ctc_logp: torch.Tensor,
    R: torch.Tensor,
    ctc_weight: float,
    candidates: int = 8,
    margin: float = 0.0,
) -> int:
    """How many leading tokens of ``prefix`` the joint decoder + CTC score still picks first.

    At each position u the committed token must score at least as well as each of
    the decoder's ``candidates`` best other tokens (by ``margin`` more), weighted as
    the beam search weighs them: ``(1 - w) * decoder + w * CTC prefix score``. ``dec_logp`` (U, V) are
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
    others = torch.where(cand[:, 1:] == toks.unsqueeze(1), -math.inf, joint[:, 1:])  # not the token itself
    ok = joint[:, 0] >= others.max(dim=1).values + margin - 1e-9
    bad = (~ok).nonzero()
    return int(bad[0]) if bad.numel() else U
