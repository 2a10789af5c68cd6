"""Beam termination: stop the final search as soon as its answer cannot change (or is predicted not to)."""

from __future__ import annotations

from dataclasses import dataclass

from pasu.decoding.beam_search import Hypothesis, StopRule


@dataclass
class BeamTermination(StopRule):
    """Stop an utterance's search early.

    * exact: every decoder and CTC increment is a log-probability (<= 0), so with
      no positive length bonus a running hypothesis only loses score. Once the
      ``nbest``-th finished hypothesis scores at least the best running one,
      nothing still running can enter the n-best: stopping cannot change it.
      With ``normalize_length`` the n-best is ranked by score / length, which a
      longer hypothesis can raise; the bound is then the running score over the
      longest length the search allows (``max_len`` + 1 with ``<eos>``).
    * predicted: pilots and the CTC greedy path predict the output length; past
      that length plus ``slack``, with a finished hypothesis in hand, stop.
      This can cut a winner; the latency benchmark counts how often it does.
    """

    nbest: int
    penalty: float
    predicted_length: int | None = None  # output tokens, without <sos>/<eos>
    slack: int = 2
    normalize_length: bool = False
    max_len: int | None = None  # output tokens the search allows (needed with normalize_length)
    stops_exact: int = 0
    stops_predicted: int = 0

    def should_stop(self, utt: int, i: int, ended: list[Hypothesis], best_running: float) -> bool:
        if not ended:
            return False
        if self.penalty <= 0 and len(ended) >= self.nbest and self._nothing_can_enter(ended, best_running):
            self.stops_exact += 1
            return True
        if self.predicted_length is not None and i >= self.predicted_length + self.slack:
            self.stops_predicted += 1
            return True
        return False

    def _nothing_can_enter(self, ended: list[Hypothesis], best_running: float) -> bool:
        if not self.normalize_length:
            kth = sorted((h.score for h in ended), reverse=True)[self.nbest - 1]
            return kth >= best_running
        if self.max_len is None:
            return False
        kth = sorted((h.score / (len(h.yseq) - 1) for h in ended), reverse=True)[self.nbest - 1]
        # score <= best_running < 0 and length <= max_len + 1: score / length <= best_running / (max_len + 1)
        return best_running < 0 and kth >= best_running / (self.max_len + 1)
