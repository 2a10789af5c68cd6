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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pasu.slu import split_intent
from pasu.streaming.ctc_leap import PrefixForward, PrefixForwardCache, as_numpy, log_posteriors, logsumexp
from pasu.streaming.options import StreamingOptions

if TYPE_CHECKING:
    from pasu.decoding.backend import NBestEntry

#: why a search was not seeded (counted in :attr:`PrefixCommitter.refused`)
REFUSALS = (
    "too_few_pilots",
    "empty_pilot",
    "margin",
    "too_short",
    "too_long",
    "unconfirmed",
    "label_unsettled",  # the intent label differed within the last collapse_label_pilots pilots
    "ctc_disagrees",  # the CTC greedy path leaves the seed within its first collapse_ctc_agree tokens
)


def label_position(entry: NBestEntry) -> int | None:
    """Where ``entry``'s SLU intent label is (:func:`pasu.slu.split_intent` on each token); None without one."""
    for i, token in enumerate(entry.tokens):
        if split_intent(token)[0] is not None:
            return i
    return None


def common_prefix(seqs: Sequence[Sequence[int]]) -> list[int]:
    if not seqs:
        return []
    n = min(len(s) for s in seqs)
    k = 0
    while k < n and all(s[k] == seqs[0][k] for s in seqs):
        k += 1
    return list(seqs[0][:k])


class DecoderPass(Protocol):
    """The decoder teacher-forced over a prefix (``RecognizerBackend.prefix_pass``): ``logp``
    (U, V), a numpy array or a CPU tensor; the object itself primes the search's decoder."""

    logp: Any


@dataclass
class Seed:
    """Where a search starts: a prefix, its CTC forward variables and its decoder pass."""

    prefix: list[int]
    hint: PrefixForward | None  # None: the search replays the prefix's CTC scores
    leapt: bool  # its forward variables were extended over new frames, not recomputed
    decoder: DecoderPass | None = None  # the confirmation's pass: the search need not redo it
    tolerated: int = 0  # tokens kept only by the confirmation's ``tolerance`` (the final search's)

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
        max_len: int,
        ctc_logp: Callable[[], Any],
        decoder_logp: Callable[[list[int]], DecoderPass | None],
        ctc_path: Sequence[int] | None = None,
        final: bool = False,
    ) -> Seed | None:
        """The seed for a search that makes at most ``max_len`` tokens
        (``DecodingOptions.max_output_length``), from the n-best lists of the pilots so far.

        ``ctc_logp()`` gives the (T, V) CTC log-posteriors now; ``decoder_logp(prefix)``
        the decoder teacher-forced over ``prefix`` on the audio heard now
        (``RecognizerBackend.prefix_pass``; None where the decoder cannot). ``ctc_path``
        (the CTC greedy path of the audio now, given at the final search) is checked
        against the seed's first ``collapse_ctc_agree`` tokens. ``final``: the seed is the
        final search's, confirmed with ``collapse_final_tolerance``.
        """
        prefix = self._agreed(pilots, max_len)
        if prefix is None:
            return None
        k = min(self.o.collapse_ctc_agree, len(prefix))
        if k and ctc_path is not None and list(ctc_path[:k]) != prefix[:k]:
            return self._refuse("ctc_disagrees")
        if not self.o.ctc_leap and not self.o.collapse_confirm:
            return Seed(prefix, None, False)
        seed = confirm(
            prefix,
            ctc_logp(),
            decoder_logp if self.o.collapse_confirm else None,
            self.ctc_weight,
            self._cache,
            leap=self.o.ctc_leap,
            margin=self._margins(pilots[-1][0], len(prefix)),
            tolerance=self.o.collapse_final_tolerance if final else 0.0,
        )
        if seed is None:
            return self._refuse("unconfirmed")
        return seed if self.o.ctc_leap else replace(seed, hint=None)

    def _margins(self, latest: NBestEntry, n: int) -> float | np.ndarray:
        """The confirmation margin of each of ``n`` seed tokens: ``collapse_label_margin`` up to the label."""
        o = self.o
        pos = label_position(latest) if o.collapse_label_margin > 0 else None
        if pos is None:
            return o.collapse_confirm_margin
        margins = np.full(n, o.collapse_confirm_margin)
        margins[: pos + 1] = max(o.collapse_confirm_margin, o.collapse_label_margin)
        return margins

    def _agreed(self, pilots: Sequence[Sequence[NBestEntry]], max_len: int) -> list[int] | None:
        o = self.o
        if len(pilots) < o.collapse_pilots:
            return self._refuse("too_few_pilots")
        recent = pilots[-o.collapse_pilots :]
        if any(not p or not p[0].token_ids for p in recent):
            return self._refuse("empty_pilot")
        latest = recent[-1]
        if o.collapse_margin > 0 and len(latest) > 1 and latest[0].score - latest[1].score < o.collapse_margin:
            return self._refuse("margin")
        if o.collapse_label_pilots > 1 and not self._label_settled(pilots):
            return self._refuse("label_unsettled")
        agreed = common_prefix([p[0].token_ids for p in recent])
        prefix = agreed[: max(0, len(agreed) - o.collapse_holdback)]
        if not prefix:
            return self._refuse("too_short")
        if too_long(prefix, max_len):
            return self._refuse("too_long")
        return prefix

    def _label_settled(self, pilots: Sequence[Sequence[NBestEntry]]) -> bool:
        """The latest ``collapse_label_pilots`` pilots' best agree up to and including the intent label."""
        n = self.o.collapse_label_pilots
        pos = label_position(pilots[-1][0])
        if pos is None:
            return True  # no label: nothing to guard
        if len(pilots) < n:
            return False
        head = pilots[-1][0].token_ids[: pos + 1]
        return all(p and p[0].token_ids[: pos + 1] == head for p in pilots[-n:])

    def _refuse(self, why: str) -> None:
        self.refused[why] += 1
        return None


def too_long(prefix: Sequence[int], max_len: int) -> bool:
    """A seed too long for a search that makes at most ``max_len`` tokens
    (``DecodingOptions.max_output_length``): it could not end a hypothesis after it."""
    return len(prefix) >= max_len - 1


def confirm(
    prefix: list[int],
    ctc_logp: Any,
    decoder_logp: Callable[[list[int]], DecoderPass | None] | None,
    ctc_weight: float,
    cache: PrefixForwardCache | None = None,
    leap: bool = True,
    margin: float | np.ndarray = 0.0,
    tolerance: float = 0.0,
) -> Seed | None:
    """``prefix`` cut where the audio of ``ctc_logp`` (T, V) stops confirming it, with its CTC
    forward variables; None if not even its first token is confirmed.

    ``tolerance`` (nats) lets a token trail the joint score's own pick by that much. The
    confirmation is a greedy, token-by-token judge, while the search keeps a word's pieces
    whose first piece is not the local best; a final search seeded by a pilot that heard
    all but the last chunk gives that pilot's words this benefit of the doubt.

    The one rule both sides use: a device's pilots seed its next search with it, and the
    cloud seeds its search with the device's hypothesis (:mod:`pasu.cloud.reuse`), judged
    by the cloud's own decoder and CTC. ``cache`` carries forward variables from an earlier
    call on the same utterance (CTC leap); without ``decoder_logp`` nothing is cut.
    """
    ctc_logp = log_posteriors(ctc_logp)
    cache = cache if cache is not None else PrefixForwardCache()
    hint = cache.update(prefix, ctc_logp, leap=leap)
    leapt = cache.reused_tokens > 0 and cache.extended_frames > 0
    dec = decoder_logp(prefix) if decoder_logp is not None else None
    tolerated = 0
    if dec is not None and cache.R is not None:
        own, rival = token_scores(prefix, dec.logp, ctc_logp, cache.R, ctc_weight)
        keep = confirmed_cut(own, rival, margin - tolerance)
        if tolerance > 0:
            tolerated = keep - confirmed_cut(own, rival, margin)
        if keep == 0:
            return None
        if keep < len(prefix):
            prefix = prefix[:keep]
            hint = cache.update(prefix, ctc_logp, leap=True)  # a cut: the rows are there already
    return Seed(prefix, hint, leapt, dec, tolerated)


def confirmed_length(
    prefix: list[int],
    dec_logp: Any,
    ctc_logp: Any,
    R: Any,
    ctc_weight: float,
    candidates: int = 8,
    margin: float | np.ndarray = 0.0,
) -> int:
    """How many leading tokens of ``prefix`` the joint decoder + CTC score still picks first.

    At each position u the committed token must score at least as well as each of
    the decoder's ``candidates`` best other tokens (by ``margin`` more: one for all, or
    one per position), weighted as
    the beam search weighs them: ``(1 - w) * decoder + w * CTC prefix score``. ``dec_logp`` (U, V) are
    the decoder's log-probabilities of each position, ``R`` (>= U, T, 2) the CTC
    forward variables of every sub-prefix (:class:`PrefixForwardCache`),
    ``ctc_logp`` (T, V) the CTC log-posteriors (blank = 0).
    """
    return confirmed_cut(*token_scores(prefix, dec_logp, ctc_logp, R, ctc_weight, candidates), margin)


def confirmed_cut(own: np.ndarray, rival: np.ndarray, margin: float | np.ndarray = 0.0) -> int:
    """The first position whose token does not beat its rival by ``margin`` (the length if none)."""
    bad = np.flatnonzero(~(own >= rival + margin - 1e-9))
    return int(bad[0]) if bad.size else own.size


def token_scores(
    prefix: list[int], dec_logp: Any, ctc_logp: Any, R: Any, ctc_weight: float, candidates: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Per position of ``prefix``, its token's joint score and the best other candidate's
    (:func:`confirmed_length`), so cuts at several margins cost one scoring."""
    U = len(prefix)
    if U == 0:
        return np.zeros(0), np.zeros(0)
    lp = log_posteriors(ctc_logp)
    T = lp.shape[0]
    dec = as_numpy(dec_logp)[:U].astype(np.float64)
    toks = np.asarray(prefix, dtype=np.int64)
    K = min(candidates, dec.shape[1])
    top = np.argpartition(-dec, K - 1, axis=1)[:, :K]  # (U, K): the decoder's K best, any order
    cand = np.concatenate((toks[:, None], top), axis=1)  # the committed token first
    Rd = as_numpy(R)[:U].astype(np.float64)  # (U, T, 2): forward variables of prefix[:u]
    last = np.concatenate(([-1], toks[:-1]))  # the last token of prefix[:u]
    same = cand == last[:, None]  # a repeated label must pass through a blank
    r_sum = np.logaddexp(Rd[..., 0], Rd[..., 1])  # (U, T)
    phi = np.where(same[:, None, :], Rd[..., 1, None], r_sum[..., None])  # (U, T, K+1)
    phi_prev = np.concatenate((phi[:, :1], phi[:, :-1]), axis=1)
    x = lp[:, cand].astype(np.float64).transpose(1, 0, 2)  # (U, T, K+1)
    valid = np.arange(T)[None, :] >= np.maximum(np.arange(U), 1)[:, None]  # frames from max(u, 1) on
    psi = logsumexp(np.where(valid[..., None], phi_prev + x, -1e30), axis=1)  # (U, K+1)
    psi[0] = np.logaddexp(psi[0], x[0, 0])  # the first token may start at frame 0
    joint = (1 - ctc_weight) * np.take_along_axis(dec, cand, axis=1) + ctc_weight * psi  # (U, K+1)
    others = np.where(cand[:, 1:] == toks[:, None], -math.inf, joint[:, 1:])  # not the token itself
    return joint[:, 0], others.max(axis=1)


@dataclass
class Relabel:
    """The final best's tokens under another intent label, scored as the search scores them."""

    token_ids: list[int]
    decoder: float  # sum of the decoder's log-probabilities, <eos> included
    ctc: float  # the CTC full-sequence log-probability
    gain: float  # weighted score over the committed label's (> 0: this label wins)


def rescore_label(
    best: NBestEntry,
    seed: Seed,
    ctc_logp: Any,
    decoder_pass: Callable[[list[int]], DecoderPass | None],
    eos: int,
    ctc_weight: float,
    alternatives: int,
    window: float,
) -> tuple[Relabel | None, int]:
    """A better intent label for ``best``, whose label came from a pilot's seed; and how many were tried.

    A seeded final search never revisits the label: only its words are searched. Here
    the words are kept and each of the decoder's ``alternatives`` best other tokens at
    the label's position, within ``window`` nats of the label there (the seed's
    confirmation pass gives those scores), is scored over the whole sequence by the
    decoder and CTC, weighted as the search weighs them; the best total wins. Both
    totals are computed afresh on the final audio (the search's own CTC score of a
    leapt seed is approximate), so the comparison is the one a full search would make
    between the two hypotheses.
    """
    pos = label_position(best)
    ids = list(best.token_ids)
    if pos is None or seed.decoder is None or len(seed.prefix) <= pos or seed.prefix[: pos + 1] != ids[: pos + 1]:
        return None, 0
    row = as_numpy(seed.decoder.logp)[pos].astype(np.float64)
    committed = ids[pos]
    order = [int(t) for t in np.argsort(-row)[: alternatives + 3] if int(t) not in (committed, eos, 0)]
    cands = [t for t in order[:alternatives] if row[committed] - row[t] <= window]
    if not cands:
        return None, 0
    lp = log_posteriors(ctc_logp)
    cache = PrefixForwardCache()

    def ctc_total(tokens: list[int]) -> float:
        cache.update(tokens, lp, leap=False)
        assert cache.R is not None
        end = cache.R[len(tokens), -1]
        return float(np.logaddexp(end[0], end[1]))

    def decoder_total(tokens: list[int]) -> float | None:
        dec = decoder_pass([*tokens, eos])
        if dec is None:
            return None
        logp = as_numpy(dec.logp).astype(np.float64)
        return float(logp[np.arange(len(tokens) + 1), [*tokens, eos]].sum())

    own_dec = best.scores.get("decoder")
    own_dec = decoder_total(ids) if own_dec is None else own_dec
    if own_dec is None:
        return None, 0
    own = (1 - ctc_weight) * own_dec + ctc_weight * ctc_total(ids)
    winner: Relabel | None = None
    for t in cands:
        alt = [*ids[:pos], t, *ids[pos + 1 :]]
        dec = decoder_total(alt)
        if dec is None:
            return None, 0
        ctc = ctc_total(alt)
        gain = (1 - ctc_weight) * dec + ctc_weight * ctc - own
        if gain > 0 and (winner is None or gain > winner.gain):
            winner = Relabel(alt, dec, ctc, gain)
    return winner, len(cands)
