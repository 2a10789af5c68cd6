"""The one hybrid CTC/attention beam search both device and cloud run.

Imported lazily: the torch-free runtime (:mod:`pasu.lite`) imports
:mod:`pasu.decoding.beam_search` and :mod:`pasu.decoding.backend` without
pulling in :class:`Recognizer` (torch and ESPnet).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BeamSearch": "pasu.decoding.beam_search",
    "Hypothesis": "pasu.decoding.beam_search",
    "DecodingOptions": "pasu.decoding.options",
    "NBestEntry": "pasu.decoding.backend",
    "Recognizer": "pasu.decoding.recognizer",
}
__all__ = ["BeamSearch", "DecodingOptions", "Hypothesis", "NBestEntry", "Recognizer"]

if TYPE_CHECKING:
    from pasu.decoding.backend import NBestEntry
    from pasu.decoding.beam_search import BeamSearch, Hypothesis
    from pasu.decoding.options import DecodingOptions
    from pasu.decoding.recognizer import Recognizer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pasu.decoding' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
