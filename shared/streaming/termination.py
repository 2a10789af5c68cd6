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
    * predicted: pilots and the CTC greedy path predict the output length; past
      that length plus ``slack``, with a finished hypothesis in hand, stop.
      This can cut a winner; the latency benchmark counts how often it does.
    """

    nbest: int
    penalty: float
    predicted_length: int | None = None  # output tokens, without <sos>/<eos>
    slack: int = 2
    stops_exact: int = 0
    stops_predicted: int = 0

    def should_stop(self, utt: int, i: int, ended: list[Hypothesis], best_running: float) -> bool:
        if not ended:
            return False
        if self.penalty <= 0 and len(ended) >= self.nbest:
            kth = sorted((h.score for h in ended), reverse=True)[self.nbest - 1]
            if kth >= best_running:
                self.stops_exact += 1
                return True
        if self.predicted_length is not None and i >= self.predicted_length + self.slack:
            self.stops_predicted += 1
            return True
        return False
