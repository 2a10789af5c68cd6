"""pasu: hybrid edge-cloud speech understanding with pilot inference.

The `pasu` package is the repository's ``shared/`` folder: the code that both the
device agent (:mod:`pasu.device`) and the cloud worker (:mod:`pasu.cloud`) use —
model loading, audio and features, and the one decoder both sides run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The public API, imported on first use so `import pasu` and `pasu --help` stay cheap (no torch).
_EXPORTS = {
    "load_model": "pasu.models",
    "Recognizer": "pasu.decoding",
    "DecodingOptions": "pasu.decoding",
    "StreamingSession": "pasu.streaming",
    "StreamingOptions": "pasu.streaming",
    "read_audio": "pasu.audio",
}

__all__ = [
    "DecodingOptions",
    "Recognizer",
    "StreamingOptions",
    "StreamingSession",
    "__version__",
    "load_model",
    "read_audio",
]

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from pasu.audio import read_audio
    from pasu.decoding import DecodingOptions, Recognizer
    from pasu.models import load_model
    from pasu.streaming import StreamingOptions, StreamingSession


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pasu' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
