"""Messages both sides build for the wire (``proto/pasu/v1``), defined once.

The device agent, the tests and the benchmarks send the cloud a device's n-best through
:func:`device_result`, so the tests and the benchmarks measure the message the agent
really sends. (:mod:`pasu.cloud.wire` is the server's request parsing, not a message.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from google.protobuf import duration_pb2

from pasu.digest import token_list_id
from pasu.slu import split_intent
from pasu.v1 import hypothesis_pb2, speech_service_pb2

if TYPE_CHECKING:
    from pasu.decoding.backend import NBestEntry

SCORERS = ("decoder", "ctc", "length_bonus")  # ScorerScores' per-scorer fields


def duration(seconds: float) -> duration_pb2.Duration:
    """``seconds`` as a protobuf Duration, to the nanosecond."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def scorer_scores(entry: NBestEntry) -> hypothesis_pb2.ScorerScores:
    """An n-best entry's per-scorer scores as ``hypothesis.proto`` carries them: the three
    named fields, any other scorer (e.g. ``lm``) in ``other``."""
    scores = hypothesis_pb2.ScorerScores(total=entry.score)
    for k, v in entry.scores.items():
        if k in SCORERS:
            setattr(scores, k, v)
        else:
            scores.other[k] = v
    return scores


def device_result(
    nbest: Sequence[NBestEntry],
    model_name: str,
    model_version: str,
    token_list: Sequence[str] | None,
    confidence: float,
    complete: bool = True,
) -> speech_service_pb2.DeviceResult:
    """The device's n-best as ``hypothesis.proto`` defines it: the intent label apart from
    the transcript, per-scorer scores, token ids, and ``confidence`` on the best hypothesis.

    The token list's id travels only with ``token_list``; without it the cloud cannot trust
    the token ids and re-tokenizes the text."""
    hyps = []
    for e in nbest:
        intent, text = split_intent(e.text)
        scores = scorer_scores(e)
        # proto3: no label is the empty string
        hyps.append(hypothesis_pb2.Hypothesis(text=text, intent=intent or "", token_ids=e.token_ids, scores=scores))
    if hyps:
        hyps[0].confidence = confidence
    tid = token_list_id(list(token_list)) if token_list is not None else ""
    info = hypothesis_pb2.ModelInfo(name=model_name, version=model_version, token_list_id=tid)
    return speech_service_pb2.DeviceResult(model=info, hypotheses=hyps, confidence=confidence, complete=complete)
