"""SLURP-style outputs: the model writes the intent label first, then the transcript."""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from pasu.resources import ROOT

_LABEL = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)+$")  # scenario_action, e.g. alarm_set


@lru_cache(maxsize=1)
def known_intents() -> frozenset[str]:
    """The intent inventory pasu's default models recognize (resources/slu/intents.tsv)."""
    path = ROOT / "slu" / "intents.tsv"
    if not path.is_file():
        return frozenset()
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return frozenset(r.split("\t", 1)[0] for r in rows if r.strip())


def split_intent(text: str) -> tuple[str | None, str]:
    """(intent label or None, transcript). A first word is a label if it is a known intent,
    or looks like one (``scenario_action``) — models trained on other inventories work too."""
    first, _, rest = text.strip().partition(" ")
    if first and (first in known_intents() or _LABEL.match(first)):
        return first, rest.strip()
    return None, text


def join_intent(intent: str | None, transcript: str) -> str:
    """The model's own output line back from the wire's separate fields: the inverse of
    :func:`split_intent` (the API carries the intent apart from the transcript)."""
    return f"{intent} {transcript}".strip() if intent else transcript


def rejection_reason(text: str, confidence: float, threshold: float, not_speech: str | None = None) -> str | None:
    """Why an answer is *not* understood, or None when it is: the one rule the device
    and the cloud both apply to their own answers (issue 28).

    * ``not_speech`` first: the device VAD's verdict that the segment's audio holds no
      command (``no_speech``, ``babble``: pasu.device.vad.not_speech_reason), whoever answered;
    * ``no_intent``: the hypothesis names no intent (nothing to act on);
    * ``no_words``: an intent label with no transcript after it. Models that
      always emit a label first produce exactly that on noise (``general_joke``
      on a fan starting), so a bare label is never an answer, whatever its score;
    * ``low_confidence``: below the rejection threshold, calibrated per model on
      in-domain commands to a stated false-reject rate (docs/device.md).
    """
    if not_speech is not None:
        return not_speech
    intent, words = split_intent(text)
    if intent is None:
        return "no_intent"
    if not words.strip():
        return "no_words"
    if confidence < threshold:
        return "low_confidence"
    return None


class _Scored(Protocol):
    @property
    def score(self) -> float: ...

    @property
    def token_ids(self) -> list[int]: ...


def answer_score(entry: _Scored) -> float:
    """A hypothesis's own search score per token, as a geometric-mean probability in (0, 1]:
    ``exp(total / tokens)``, the decoder and CTC weighted as the beam search ranked it.

    The cloud thresholds this rather than its ``Hypothesis.confidence``, a softmax over
    the n-best it returns (1.0 for the default single hypothesis): on 150 right answers
    to in-domain commands and 150 out-of-domain sentences the per-token score tells them
    apart with AUROC 0.998 (docs/rejection/README.md).
    """
    return math.exp(min(0.0, entry.score / max(1, len(entry.token_ids))))


REJECTION_FILE = "rejection.json"  # beside a model: its calibrated rejection threshold


def model_rejection_threshold(model_root: str | Path | None) -> float | None:
    """The rejection threshold calibrated for a (cloud) model, from ``rejection.json``
    beside its weights (``pasu eval --rejection --calibrate --save``); None if absent."""
    if model_root is None:
        return None
    path = Path(model_root) / REJECTION_FILE
    if not path.is_file():
        return None
    return float(json.loads(path.read_text(encoding="utf-8"))["threshold"])
