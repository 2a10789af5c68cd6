"""Pilot inference: streaming sessions that work while the user talks (PASU)."""

from pasu.streaming.options import TECHNIQUES, StreamingOptions
from pasu.streaming.session import FinalResult, PilotRecord, StreamingSession

__all__ = ["TECHNIQUES", "FinalResult", "PilotRecord", "StreamingOptions", "StreamingSession"]
