"""Batched hybrid CTC/attention beam search with ESPnet's scoring semantics.

The search only weighs scorers (see :mod:`pasu.decoding.scorers`); everything
about one step is tensors over the running hypotheses of *all* utterances:

    full scores -> pre-beam top-k -> partial (CTC) scores -> + previous score
    -> per-utterance top-k over (slot, token) -> ended / running split

The same search runs on torch tensors and on numpy arrays (the torch-free
runtime, :mod:`pasu.lite`): what is not plain arithmetic or indexing goes
through :mod:`pasu.decoding.arrays`.

Hypotheses are kept compact (only running ones, grouped by utterance), so a
finished utterance or an ended hypothesis costs nothing in later steps. The
arithmetic (order of the weighted additions, top-k layout, end detection,
``<eos>`` at the length limit) follows ESPnet's ``BatchBeamSearch``, which is
what makes the n-best lists identical.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pasu.decoding.arrays import ops_for
from pasu.decoding.interface import LOG_ZERO, EncoderBatch, Scorer, ScorerSession
from pasu.decoding.options import DecodingOptions

log = logging.getLogger(__name__)

END_DETECT_M = 3
END_DETECT_D = -10.0  # np.log(1 * np.exp(-10)), ESPnet's D_end


@dataclass
class Hypothesis:
    """One finished hypothesis: tokens without ``<sos>``/``<eos>``, and its scores."""

    yseq: list[int]  # with <sos> ... <eos>, as ESPnet keeps it
    score: float  # the weighted total that ranked it
    scores: dict[str, float]  # unweighted, per scorer name

    def token_ids(self, eos: int) -> list[int]:
        """ESPnet's ``yseq[1:-1]`` with blanks (id 0) removed — and the extra ``<eos>``
        ESPnet leaves in a hypothesis that ended exactly at the length limit."""
        return [t for t in self.yseq[1:-1] if t != 0 and t != eos]


@dataclass
class _Ended:
    """The finished hypotheses of one utterance, with what end detection needs."""

    hyps: list[Hypothesis] = field(default_factory=list)
    best: float = float("-inf")
    best_by_len: dict[int, float] = field(default_factory=dict)

    def add(self, hyp: Hypothesis) -> None:
        self.hyps.append(hyp)
        self.best = max(self.best, hyp.score)
        n = len(hyp.yseq)
        self.best_by_len[n] = max(self.best_by_len.get(n, float("-inf")), hyp.score)

    def end_detected(self, i: int) -> bool:
        """ESPnet's ``end_detect``: the best of each of the last M lengths is far behind."""
        if not self.hyps:
            return False
        count = 0
        for m in range(END_DETECT_M):
            best_len = self.best_by_len.get(i - m)
            if best_len is not None and best_len - self.best < END_DETECT_D:
                count += 1
        return count == END_DETECT_M


@dataclass
class _Running:
    """The running hypotheses of all utterances, compact and grouped by utterance."""

    yseq: Any  # (n, L) int64, where the scores are
    utt: Any  # (n,) int64 on the host, non-decreasing
    score: Any  # (n,)
    scores: dict[str, Any]  # unweighted accumulated score per scorer, (n,)


class StopRule:
    """Ends one utterance's search before ESPnet's rules would (beam termination)."""

    def should_stop(self, utt: int, i: int, ended: list[Hypothesis], best_running: float) -> bool:
        raise NotImplementedError


class BeamSearch:
    """Weighs the scorers and prunes; holds no state between calls."""

    def __init__(
        self,
        scorers: dict[str, Scorer],
        weights: dict[str, float],
        vocab_size: int,
        sos: int,
        eos: int,
        options: DecodingOptions,
    ) -> None:
        # ESPnet drops a scorer whose weight is 0; its name then has no score.
        active = {k: s for k, s in scorers.items() if weights.get(k, 0.0) != 0.0}
        self.full = {k: s for k, s in active.items() if not s.partial}
        self.part = {k: s for k, s in active.items() if s.partial}
        self.weights = weights
        self.vocab_size = vocab_size
        self.sos, self.eos = sos, eos
        self.options = options
        self.do_pre_beam = options.pre_beam_size < vocab_size and len(self.part) > 0 and len(self.full) > 0

    # ------------------------------------------------------------------
    def __call__(
        self,
        batch: EncoderBatch,
        prefixes: list[list[int]] | None = None,
        beam_size: int | None = None,
        stop: StopRule | None = None,
        prime_hints: dict[str, object] | None = None,
    ) -> list[list[Hypothesis]]:
        """N-best lists (all ended hypotheses, best first) for each utterance.

        With ``prefixes`` (one token list per utterance, all the same length) the
        search starts from those agreed tokens instead of ``<sos>`` (beam
        collapse); ``beam_size`` overrides the options' beam; ``stop`` may end an
        utterance's search early (beam termination). With none of them this is
        exactly ESPnet's search.
        """
        results = self._search(batch, self.options.minlenratio, prefixes, beam_size, stop, prime_hints)
        retry = [b for b, r in enumerate(results) if not r]
        minlen = self.options.minlenratio
        while retry and minlen >= 0.1:  # ESPnet retries with a smaller minlenratio
            minlen = max(0.0, minlen - 0.1)
            log.warning("no hypothesis ended for utterances %s; retrying with minlenratio %.1f", retry, minlen)
            sub = EncoderBatch(batch.enc[retry], batch.lengths[retry])
            sub_prefixes = [prefixes[b] for b in retry] if prefixes else None
            for b, r in zip(retry, self._search(sub, minlen, sub_prefixes, beam_size, stop), strict=True):
                results[b] = r
            retry = [b for b, r in enumerate(results) if not r]
        return results

    def _length_bounds(self, lengths: list[int], minlenratio: float) -> tuple[list[int], list[int]]:
        o = self.options
        maxlens, minlens = [], []
        for n in lengths:
            maxlens.append(o.max_output_length(n))
            minlens.append(-1 * int(minlenratio) if minlenratio < 0 else int(minlenratio * n))
        return maxlens, minlens

    def begin(
        self,
        batch: EncoderBatch,
        prefixes: list[list[int]] | None = None,
        prime_hints: dict[str, object] | None = None,
    ) -> tuple[_Running, dict[str, ScorerSession]]:
        """The initial hypotheses (``<sos>`` + prefix, one per utterance) and fresh scorer sessions."""
        n_utt = batch.n_utt
        xp = ops_for(batch.enc)
        utt = xp.arange(n_utt)
        if prefixes is not None and len({len(p) for p in prefixes}) > 1:
            raise ValueError("seeded prefixes in one batch must have the same length")
        seed = [[self.sos] + list(p) for p in prefixes] if prefixes else [[self.sos]] * n_utt
        yseq = xp.index(seed, like=batch.enc)
        sessions = {k: s.begin(batch, utt) for k, s in (*self.full.items(), *self.part.items())}
        scores = {k: xp.zeros(n_utt, like=batch.enc) for k in sessions}
        score = xp.zeros(n_utt, like=batch.enc)
        if yseq.shape[1] > 1:
            for k, sess in sessions.items():
                scores[k] = xp.cast(sess.prime(yseq, utt, (prime_hints or {}).get(k)), like=batch.enc)
                score = score + self.weights[k] * scores[k]
        return _Running(yseq=yseq, utt=utt, score=score, scores=scores), sessions

    def _search(
        self,
        batch: EncoderBatch,
        minlenratio: float,
        prefixes: list[list[int]] | None = None,
        beam_size: int | None = None,
        stop: StopRule | None = None,
        prime_hints: dict[str, object] | None = None,
    ) -> list[list[Hypothesis]]:
        maxlens, minlens = self._length_bounds(batch.lengths.tolist(), minlenratio)
        running, sessions = self.begin(batch, prefixes, prime_hints)
        ended = [_Ended() for _ in range(batch.n_utt)]
        done = [False] * batch.n_utt
        for i in range(running.yseq.shape[1] - 1, max(maxlens)):
            running = self.step(i, running, sessions, ended, done, maxlens, minlens, beam_size, stop)
            if all(done):
                break
        return [self._nbest(e.hyps) for e in ended]

    def _nbest(self, hyps: list[Hypothesis]) -> list[Hypothesis]:
        if self.options.normalize_length:
            return sorted(hyps, key=lambda h: h.score / (len(h.yseq) - 1), reverse=True)
        return sorted(hyps, key=lambda h: h.score, reverse=True)

    # ------------------------------------------------------------------
    def expand(self, running: _Running, sessions: dict[str, ScorerSession]) -> tuple[Any, dict[str, Any]]:
        """Weighted scores (n, V) of every one-token extension, and each scorer's own."""
        xp = ops_for(running.score)
        n = running.yseq.shape[0]
        weighted = xp.zeros((n, self.vocab_size), like=running.score)
        scores: dict[str, Any] = {}
        for k in self.full:
            scores[k] = sessions[k].score(running.yseq, running.utt, None)
            weighted += self.weights[k] * scores[k]
        candidates = None
        if self.do_pre_beam:
            candidates = xp.topk(weighted, self.options.pre_beam_size)
        for k in self.part:
            scores[k] = sessions[k].score(running.yseq, running.utt, candidates)
            weighted += self.weights[k] * scores[k]
        weighted += running.score[:, None]
        return weighted, scores

    def prune(self, weighted: Any, utt: Any, live_utts: list[int], width: int) -> tuple[Any, Any]:
        """The ``width`` best (parent row, token) pairs of each live utterance.

        Rows of an utterance are laid out as ESPnet lays out its hypotheses
        (slot-major, ``slot * V + token``), so top-k sees the same ordering.
        """
        xp = ops_for(weighted)
        V = self.vocab_size
        n = weighted.shape[0]
        counts = xp.bincount(utt, minlength=int(utt.max()) + 1 if n else 1)
        first = xp.cumsum(counts) - counts  # first row of each utterance
        slot = xp.arange(n) - first[utt]
        slots = int(counts.max())
        live = xp.index(live_utts)
        grid = xp.full((len(live_utts), slots, V), LOG_ZERO, like=weighted)
        pos = xp.index([-1] * (int(utt.max()) + 1))
        pos[live] = xp.arange(len(live_utts))
        g = pos[utt]
        grid[xp.to(g, like=weighted), xp.to(slot, like=weighted)] = weighted
        top = xp.to_host(xp.topk(grid.reshape(len(live_utts), slots * V), width))  # (U, width)
        parents = (top // V + first[live][:, None]).reshape(-1)
        tokens = (top % V).reshape(-1)
        return parents, tokens

    def step(
        self,
        i: int,
        running: _Running,
        sessions: dict[str, ScorerSession],
        ended: list[_Ended],
        done: list[bool],
        maxlens: list[int],
        minlens: list[int],
        beam_size: int | None = None,
        stop: StopRule | None = None,
    ) -> _Running:
        """One output position for every live utterance; updates ``ended``/``done`` in place."""
        weighted, scores = self.expand(running, sessions)
        live_utts = sorted(set(running.utt.tolist()))
        width = beam_size or self.options.beam_size
        parents, tokens = self.prune(weighted, running.utt, live_utts, width)
        xp = ops_for(weighted)
        p_dev, t_dev = xp.to(parents, like=weighted), xp.to(tokens, like=weighted)
        new_score = weighted[p_dev, t_dev]
        new_scores = {k: running.scores[k][p_dev] + v[p_dev, t_dev] for k, v in scores.items()}
        new_yseq = xp.cat([running.yseq[p_dev], t_dev[:, None]], axis=1)
        new_utt = running.utt[parents]

        is_eos = (tokens == self.eos).tolist()
        keep: list[int] = []
        best_running: list[float] = new_score.tolist() if stop is not None else []
        for u_pos, b in enumerate(live_utts):
            lo, hi = u_pos * width, (u_pos + 1) * width
            at_maxlen = i == maxlens[b] - 1
            finished = [j for j in range(lo, hi) if at_maxlen or is_eos[j]]
            if finished and i >= minlens[b]:
                self._finish(new_yseq, new_score, new_scores, finished, at_maxlen, ended[b])
            alive = [j for j in range(lo, hi) if not (at_maxlen or is_eos[j])]
            if at_maxlen or not alive:
                done[b] = True
            elif self.options.maxlenratio == 0.0 and ended[b].end_detected(i):
                log.debug("end detected at %d for utterance %d", i, b)
                done[b] = True
            elif stop is not None and stop.should_stop(b, i, ended[b].hyps, max(best_running[j] for j in alive)):
                log.debug("beam termination at %d for utterance %d", i, b)
                done[b] = True
            else:
                keep.extend(alive)
        keep_t = xp.index(keep)
        k_dev = xp.to(keep_t, like=weighted)
        if keep:
            for s in sessions.values():
                s.advance(parents[keep_t], tokens[keep_t])
        return _Running(
            yseq=new_yseq[k_dev],
            utt=new_utt[keep_t],
            score=new_score[k_dev],
            scores={k: v[k_dev] for k, v in new_scores.items()},
        )

    def _finish(self, yseq, score, scores, rows: list[int], at_maxlen: bool, ended: _Ended) -> None:
        idx = ops_for(yseq).index(rows, like=yseq)
        seqs = yseq[idx].tolist()
        totals = score[idx].tolist()
        per = {k: v[idx].tolist() for k, v in scores.items()}
        for n, seq in enumerate(seqs):
            if at_maxlen:  # ESPnet appends <eos> to every running hypothesis at the limit
                seq = seq + [self.eos]
            ended.add(Hypothesis(yseq=seq, score=totals[n], scores={k: v[n] for k, v in per.items()}))
