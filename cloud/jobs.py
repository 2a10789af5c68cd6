"""A unit of work for the batcher, shared by every caller waiting for it.

One job may have several callers (a client retry coalesced with its first
attempt), so it is abandoned only when *all* of them have gone or their
deadlines have all passed — never because one impatient caller left.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pasu.decoding.options import DecodingOptions
from pasu.decoding.recognizer import NBestEntry

if TYPE_CHECKING:
    from pasu.v1.speech_service_pb2 import DecoderReuse


class JobDropped(Exception):
    """The job was dropped before decoding: every caller cancelled or timed out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "cancelled" | "deadline" | "shutdown"


@dataclass
class Outcome:
    """A job's result: the n-best, how it was reached, and where the time went."""

    nbest: list[NBestEntry]
    options: DecodingOptions
    reuse: DecoderReuse | None = None  # for Offload, None otherwise
    queue_s: float = 0.0
    encode_s: float = 0.0
    decode_s: float = 0.0
    batch_size: int = 1
    seed_tokens: int = 0  # reuse "seed": device tokens the cloud's search started from


@dataclass
class Job:
    """Audio to decode with given options, plus who still wants the answer."""

    samples: np.ndarray
    options: DecodingOptions
    request_id: str = ""
    rpc: str = ""
    device_seqs: list[list[int]] | None = None  # Offload: device n-best as cloud token ids
    device_complete: bool = False  # they cover the whole segment (rescoring needs that)
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    _waiters: int = 0
    _deadlines: list[float | None] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, deadline: float | None) -> None:
        """A caller that waits for this job; ``deadline`` is monotonic seconds or None."""
        with self._lock:
            self._waiters += 1
            self._deadlines.append(deadline)

    def detach(self) -> None:
        """A caller went away (cancelled or timed out)."""
        with self._lock:
            self._waiters = max(0, self._waiters - 1)

    def drop_reason(self, now: float | None = None) -> str | None:
        """Why nobody wants this job any more, or None if someone still does."""
        with self._lock:
            if self._waiters == 0:
                return "cancelled"
            if None in self._deadlines:
                return None
            now = time.monotonic() if now is None else now
            return "deadline" if max(self._deadlines) <= now else None  # type: ignore[type-var]
