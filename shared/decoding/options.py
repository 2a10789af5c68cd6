"""Every knob of the beam search in one frozen dataclass (whisper's `DecodingOptions`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class DecodingOptions:
    """Hybrid CTC/attention beam search settings, with ESPnet's meaning and defaults.

    With these defaults the search reproduces ``Speech2Text(beam_size=10,
    ctc_weight=0.5, lm_weight=0, ctc_window_margin=0)``: the same n-best token
    sequences, scores equal within float rounding. CTC weight 0.5 is ESPnet's
    own default and the best of those measured (CHANGELOG.md, v2).
    """

    beam_size: int = 10
    ctc_weight: float = 0.5  # decoder weight is 1 - ctc_weight
    penalty: float = 0.0  # length bonus per token
    maxlenratio: float = 0.0  # 0: up to one token per encoder frame, with end detection
    minlenratio: float = 0.0
    nbest: int = 1
    pre_beam_ratio: float = 1.5  # CTC scores only int(ratio * beam) tokens per hypothesis
    normalize_length: bool = False  # rank n-best by score / length
    # How the CTC prefix forward variables are computed for the kept hypotheses:
    # "scan" — closed form with cumulative log-sum-exp in float64 (a few tensor ops
    # per step, whatever the number of frames); "loop" — ESPnet's frame-by-frame
    # recursion (one set of ops per frame), kept to measure the difference.
    ctc_recursion: Literal["scan", "loop"] = "scan"
    # Project each decoder position into keys/values once and the encoder output
    # once per utterance (True), or call ESPnet's forward_one_step, which redoes
    # both every step (False).
    decoder_kv_cache: bool = True
    # Shallow fusion with the model's language model (ESPnet's ``lm_weight``): the
    # LM's log-probability of each token, times this, joins the sum. 0 leaves the LM
    # out of the search entirely (ESPnet drops a scorer whose weight is 0).
    lm_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.nbest < 1 or self.nbest > self.beam_size:
            raise ValueError(f"nbest must be in [1, beam_size], got {self.nbest}")
        if not 0.0 <= self.lm_weight < float("inf"):
            # negative weights would let a hypothesis gain score by growing (beam termination's bound)
            raise ValueError(f"lm_weight must be a finite number >= 0, got {self.lm_weight}")
        if self.ctc_recursion not in ("scan", "loop"):
            raise ValueError(f"ctc_recursion must be 'scan' or 'loop', got {self.ctc_recursion!r}")

    @property
    def pre_beam_size(self) -> int:
        return int(self.pre_beam_ratio * self.beam_size)

    def max_output_length(self, frames: int) -> int:
        """The longest hypothesis the search makes over ``frames`` encoder frames (ESPnet's
        ``maxlenratio``: 0 one token per frame, < 0 a fixed length, > 0 a ratio)."""
        if self.maxlenratio == 0:
            return frames
        if self.maxlenratio < 0:
            return -1 * int(self.maxlenratio)
        return max(1, int(self.maxlenratio * frames))

    def with_(self, **changes) -> DecodingOptions:
        return replace(self, **changes)
