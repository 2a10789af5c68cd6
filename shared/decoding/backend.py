"""What a streaming session needs of a recognizer, whatever runs the model.

Two runtimes implement it: :class:`pasu.decoding.recognizer.Recognizer` (torch
and ESPnet) and :class:`pasu.lite.recognizer.LiteRecognizer` (the exported
graphs on onnxruntime and numpy). Both run the one beam search
(:mod:`pasu.decoding.beam_search`) and the one pilot logic
(:mod:`pasu.streaming`); only the encoder and the score sources differ. This
module imports neither torch nor ESPnet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pasu.decoding.beam_search import Hypothesis, StopRule
from pasu.decoding.interface import EncoderBatch
from pasu.decoding.options import DecodingOptions


@dataclass(frozen=True)
class NBestEntry:
    """One hypothesis as people and other programs read it."""

    text: str
    tokens: list[str]
    token_ids: list[int]
    score: float
    scores: dict[str, float]  # unweighted per scorer; a scorer with weight 0 is absent
    yseq: list[int]  # <sos> ... <eos>, for exact comparisons with ESPnet


def scorer_weights(options: DecodingOptions) -> dict[str, float]:
    """ESPnet's weights: the decoder and CTC share 1, the length bonus is the penalty, the LM its own."""
    return {
        "decoder": 1.0 - options.ctc_weight,
        "ctc": options.ctc_weight,
        "length_bonus": options.penalty,
        "lm": options.lm_weight,
    }


class IncrementalEncoding(Protocol):
    """One utterance's encoder, fed as audio arrives (late contextualization)."""

    #: True when the local blocks really run per chunk (False: all audio is re-encoded)
    incremental: bool

    def feed(self, audio: np.ndarray) -> None: ...

    def encode(self, final: bool) -> EncoderBatch | None:
        """Encoder output of all audio so far; None while it has no frames yet."""
        ...


class RecognizerBackend(Protocol):
    """The recognizer a :class:`pasu.streaming.StreamingSession` drives."""

    options: DecodingOptions

    @property
    def name(self) -> str: ...

    @property
    def sample_rate(self) -> int: ...

    @property
    def sos(self) -> int: ...

    @property
    def eos(self) -> int: ...

    def incremental_encoder(self) -> IncrementalEncoding | None:
        """A per-utterance incremental encoder, or None where only whole-audio encoding exists."""
        ...

    def encode_audio(self, audio: np.ndarray) -> EncoderBatch | None:
        """One utterance encoded whole; None while it is too short for the subsampling."""
        ...

    def ctc_log_probs(self, batch: EncoderBatch) -> np.ndarray:
        """(T, V) CTC log-posteriors of the batch's first utterance."""
        ...

    def ctc_greedy(self, batch: EncoderBatch) -> list[int]:
        """The CTC best path of the first utterance: repeats merged, blanks and ``<eos>`` dropped."""
        ...

    def prefix_pass(self, batch: EncoderBatch, prefix: list[int]) -> Any:
        """The decoder teacher-forced over ``<sos>`` + ``prefix`` on the first utterance.

        The result has ``.logp`` (U, V): each prefix token's distribution given those
        before it; handed back to :meth:`decode` as ``prime_hints["decoder"]``, it spares
        the search a second pass. None where this decoder cannot.
        """
        ...

    def entry(self, hyp: Hypothesis) -> NBestEntry:
        """A search's hypothesis as the n-best reports it (text, tokens, scores)."""
        ...

    def decode(
        self,
        batch: EncoderBatch,
        *,
        prefixes: list[list[int]] | None = None,
        beam_size: int | None = None,
        nbest: int | None = None,
        stop: StopRule | None = None,
        prime_hints: dict[str, object] | None = None,
    ) -> list[list[NBestEntry]]: ...


def ctc_best_path(frame_ids: list[int], blank: int, eos: int) -> list[int]:
    """Per-frame argmax ids -> tokens: repeats merged, blanks and ``<eos>`` dropped."""
    out, prev = [], None
    for t in frame_ids:
        if t != prev and t != blank and t != eos:
            out.append(t)
        prev = t
    return out
