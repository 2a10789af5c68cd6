"""What the agent prints: one JSON object per segment (or a readable line), plus interim lines.

The record is a plain dict built in one place, so the JSON-lines contract
(field names, types, units) is defined here and nowhere else.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import IO

from pasu.slu import split_intent


def intent_of(text: str) -> str | None:
    """The intent label ``text`` starts with, if any (the cloud reads it the same way)."""
    return split_intent(text)[0]


@dataclass
class SegmentOutcome:
    """One segment's answer, before formatting."""

    file: str
    index: int
    start_s: float
    end_s: float
    text: str
    confidence: float  # of the answer given (the cloud's when it answered)
    device_confidence: float
    source: str  # "device" | "cloud"
    offloaded: bool
    offload_reason: str | None
    offload_stage: str | None  # "start" | "pilot" | "final"
    latency_ms: float  # end of segment (VAD) → answer
    breakdown: dict[str, float] = field(default_factory=dict)
    fallback: bool = False
    cut: bool = False
    error: str | None = None
    request_id: str | None = None
    cloud: dict | None = None  # model, attempts, decoder_reuse, timing
    # None: understood; else why not (pasu.slu.rejection_reason, or the cloud's own verdict)
    reject_reason: str | None = None

    @property
    def understood(self) -> bool:
        return self.reject_reason is None


def segment_record(o: SegmentOutcome) -> dict:
    """The JSON line. ``intent`` is what to act on: null unless ``understood``; the best
    guess is always in ``best_intent`` and ``text`` (issue 28: noise and speech that is
    no command get ``understood: false``, not a joke)."""
    best = intent_of(o.text)
    rec = {
        "file": o.file,
        "segment": {"index": o.index, "start": round(o.start_s, 3), "end": round(o.end_s, 3)},
        "text": o.text,
        "understood": o.understood,
        "intent": best if o.understood else None,
        "best_intent": best,
        "confidence": round(o.confidence, 4),
        "device_confidence": round(o.device_confidence, 4),
        "source": o.source,
        "offloaded": o.offloaded,
        "offload_reason": o.offload_reason,
        "offload_stage": o.offload_stage,
        "latency_ms": round(o.latency_ms, 1),
        "latency_breakdown": {k: round(v, 1) for k, v in o.breakdown.items()},
        "fallback": o.fallback,
    }
    if o.reject_reason:
        rec["reject_reason"] = o.reject_reason
    if o.cut:
        rec["segment"]["cut"] = True
    if o.request_id:
        rec["request_id"] = o.request_id
    if o.cloud:
        rec["cloud"] = o.cloud
    if o.error:
        rec["error"] = o.error
    return rec


def interim_record(file: str, index: int, start_s: float, heard_s: float, text: str, confidence: float) -> dict:
    return {
        "file": file,
        "segment": {"index": index, "start": round(start_s, 3), "end": None},
        "interim": True,
        "text": text,
        "intent": intent_of(text),
        "confidence": round(confidence, 4),
        "audio_s": round(heard_s, 3),
    }


def human_line(rec: dict) -> str:
    seg = rec["segment"]
    if rec.get("interim"):
        return f"  … [{seg['start']:7.2f}s +{rec['audio_s']:.2f}s] {rec['text']}"
    where = rec["source"] + (" (fallback)" if rec.get("fallback") else "")
    if rec["offloaded"] and rec["source"] == "cloud":
        where += f", offloaded: {rec['offload_reason']}"
    err = f"  ! {rec['error']}" if rec.get("error") else ""
    said = rec["text"]
    if not rec.get("understood", True):
        said = f"not understood ({rec.get('reject_reason')}; best guess: {rec['text'] or '-'})"
    return (
        f"{rec['file']} [{seg['start']:7.2f}-{seg['end']:7.2f}s] {said!s}"
        f"  ({where}, conf {rec['confidence']:.2f}, {rec['latency_ms']:.0f} ms){err}"
    )


class Writer:
    """Prints records as JSON lines (default) or readable lines, flushing each."""

    def __init__(self, stream: IO[str] | None = None, human: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.human = human

    def write(self, rec: dict) -> None:
        line = human_line(rec) if self.human else json.dumps(rec, ensure_ascii=False)
        self.stream.write(line + "\n")
        self.stream.flush()
